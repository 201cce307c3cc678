//! bpf: the C eBPF ARP/NDP responder (built by clang in build.rs) and typed
//! wrappers over its maps and program, loaded with aya.
