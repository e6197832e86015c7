//! [`Metrics`] as an [`Observer`] of the session's [`Event`]s: which counter each event moves, and the
//! series created at 0 so that rates and alerts see them from the start.

use super::{escaped, KindLabel, Metrics, PrincipalLabel, ReasonLabel, ResultLabel};
use crate::event::{Action, Event, Observer, Refused};

impl Observer for Metrics {
    fn event(&self, event: &Event<'_>) {
        match event {
            Event::ConnectionAccepted { who } => {
                self.connections_open.inc();
                let principal = PrincipalLabel { principal: escaped(who.principal.as_str()) };
                self.connections_accepted.get_or_create(&principal).inc();
            }
            Event::ConnectionRefused { reason, .. } => {
                self.connections_refused.get_or_create(&ReasonLabel { reason: reason.name() }).inc();
            }
            Event::ConnectionClosed { .. } => {
                self.connections_open.dec();
            }
            Event::StreamRefused { code, .. } => self.refused(Action::Stream, *code),
            Event::PublishAccepted { topic, messages, .. } => {
                let label = self.topic(topic);
                self.publishes.get_or_create(&label).inc();
                self.published_messages.get_or_create(&label).inc_by((*messages).into());
            }
            Event::PublishRefused { code, .. } | Event::PublishFailed { code, .. } => {
                self.refused(Action::Publish, *code)
            }
            Event::Delivered { topic, messages, bytes, .. } => {
                let label = self.topic(topic);
                self.delivered_messages.get_or_create(&label).inc_by((*messages).into());
                self.delivered_bytes.get_or_create(&label).inc_by(*bytes as u64);
            }
            Event::AckReceived { topic, .. } => {
                self.acks_received.get_or_create(&self.topic(topic)).inc();
            }
            Event::OffsetCommitted { topic, .. } => {
                self.offset_commits.get_or_create(&self.topic(topic)).inc();
            }
            Event::SharedJoined { topic, .. } => {
                self.shared_members.get_or_create(&self.topic(topic)).inc();
            }
            Event::SharedLeft { topic } => {
                self.shared_members.get_or_create(&self.topic(topic)).dec();
            }
            Event::SharedRewind { topic, .. } => {
                self.shared_rewinds.get_or_create(&self.topic(topic)).inc();
            }
            Event::SharedAckOverdue { topic, .. } => {
                self.shared_ack_overdue.get_or_create(&self.topic(topic)).inc();
            }
            Event::SubscribeAccepted { durable, created, .. } => {
                let kind = match (durable, created) {
                    (None, _) => "ephemeral",
                    (Some(_), false) => "durable",
                    (Some(_), true) => "durable_created",
                };
                self.subscriptions.get_or_create(&KindLabel { kind }).inc();
            }
            Event::SubscribeRefused { code, .. } => self.refused(Action::Subscribe, *code),
            Event::PolicyStored { topic, epoch, .. } => {
                self.policies_stored.inc();
                let label = self.topic(topic);
                if !self.topics.is_other(&label.topic) {
                    self.policy_epoch.get_or_create(&label).set(i64::try_from(*epoch).unwrap_or(i64::MAX));
                }
            }
            Event::PolicyRefused { code, .. } => self.refused(Action::PutPolicy, *code),
            Event::PolicyReadRefused { code, .. } => self.refused(Action::GetPolicies, *code),
            Event::AdminRefused { code, .. } => self.refused(Action::Admin, *code),
            Event::AdminAnswered { .. } => {}
            Event::Shutdown => {
                self.shutdowns.inc();
            }
            Event::ConfigReloaded { .. } => {
                self.config_reloads.get_or_create(&ResultLabel { result: "ok" }).inc();
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                self.config_loaded_at(now.map_or(0, |d| d.as_secs()));
            }
            Event::ConfigReloadRefused { .. } => {
                self.config_reloads.get_or_create(&ResultLabel { result: "refused" }).inc();
            }
            Event::ConnectionRevoked { .. } => {
                self.revoked.get_or_create(&KindLabel { kind: "connection" }).inc();
            }
            Event::StreamRevoked { action, .. } => {
                let kind = if *action == Action::Publish { "publish" } else { "subscription" };
                self.revoked.get_or_create(&KindLabel { kind }).inc();
            }
        }
    }
}

impl Metrics {
    /// Creates the series of every refusal reason at 0, so that rates and alerts see them from the start.
    pub fn with_zero_series(self) -> Metrics {
        for reason in Refused::ALL {
            let _ = self.connections_refused.get_or_create(&ReasonLabel { reason: reason.name() });
        }
        for kind in ["ephemeral", "durable", "durable_created"] {
            let _ = self.subscriptions.get_or_create(&KindLabel { kind });
        }
        for result in ["ok", "refused"] {
            let _ = self.config_reloads.get_or_create(&ResultLabel { result });
        }
        for kind in ["connection", "subscription", "publish"] {
            let _ = self.revoked.get_or_create(&KindLabel { kind });
        }
        self
    }
}
