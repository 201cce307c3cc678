//! `DeviceActor`: the actix shell around [`DeviceTracker`]. It starts the
//! tracker when the actor starts and forwards every [`DeviceChange`] to a
//! recipient (the one that writes the `devices` table, see
//! [`super::write_change`]). All decisions live in the tracker and
//! [`super::DeviceState`]; this file only wires them to the actor runtime.
//!
//! The netlink socket is opened on the arbiter the actor runs on, so it
//! follows that thread's network namespace.

use std::time::Duration;

use actix::prelude::*;
use tracing::{error, info, warn};

use super::{DeviceChange, DeviceFilter, DeviceTracker, TrackerOptions};

/// Follows the node's devices and sends the changes on.
pub struct DeviceActor {
    filter: DeviceFilter,
    options: TrackerOptions,
    sink: Recipient<DeviceChange>,
}

impl DeviceActor {
    pub fn new(
        filter: DeviceFilter,
        options: TrackerOptions,
        sink: Recipient<DeviceChange>,
    ) -> Self {
        Self {
            filter,
            options,
            sink,
        }
    }

    /// Start the tracker and attach it as this actor's stream; on failure
    /// try again after the retry interval.
    fn start_tracker(&self, ctx: &mut Context<Self>) {
        let filter = self.filter.clone();
        let options = self.options.clone();
        let retry = self.options.retry_interval.max(Duration::from_millis(10));
        async move { DeviceTracker::start_with(filter, options).await }
            .into_actor(self)
            .map(move |started, _actor, ctx| match started {
                Ok(tracker) => {
                    info!("device tracker started");
                    ctx.add_stream(tracker);
                }
                Err(error) => {
                    error!(%error, retry_in = ?retry, "device tracker failed to start");
                    ctx.run_later(retry, |actor, ctx| actor.start_tracker(ctx));
                }
            })
            .wait(ctx);
    }
}

impl Actor for DeviceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.start_tracker(ctx);
    }
}

impl StreamHandler<DeviceChange> for DeviceActor {
    fn handle(&mut self, change: DeviceChange, _ctx: &mut Context<Self>) {
        self.sink.do_send(change);
    }

    /// The tracker only ends if its task died; start a new one.
    fn finished(&mut self, ctx: &mut Context<Self>) {
        warn!("device tracker stopped, starting it again");
        self.start_tracker(ctx);
    }
}
