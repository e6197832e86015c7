//! **Administrative queries** of a running broker ([`Client::admin`](crate::Client::admin)): one `Admin`
//! frame on a stream of its own, answered with `AdminAnswer` or an error. The answers are the broker's
//! word (`sealpost_protocol::admin`).

use sealpost_protocol::{AdminAnswer, AdminQuery, Frame};

use crate::error::{sanitize, Error, Result};
use crate::link::unexpected;
use crate::shared::Shared;

/// Asks `query` once; an answer of another kind than the query's is a protocol violation.
pub(crate) async fn ask(shared: &Shared, query: AdminQuery) -> Result<AdminAnswer> {
    let mut link = shared.open_link().await?;
    let request_id = shared.request_id();
    link.send(&Frame::Admin { request_id, query: query.clone() }).await?;
    let answer = link.read().await?;
    link.finish();
    match answer {
        Some(Frame::AdminAnswer { request_id: answered, answer }) if answered == request_id => {
            let matches = matches!(
                (&query, &answer),
                (AdminQuery::Stats, AdminAnswer::Stats(_))
                    | (AdminQuery::Topics { .. }, AdminAnswer::Topics { .. })
                    | (AdminQuery::Subscriptions { .. }, AdminAnswer::Subscriptions { .. })
                    | (AdminQuery::Connections { .. }, AdminAnswer::Connections { .. })
            );
            if matches {
                Ok(answer)
            } else {
                Err(Error::violation("an administrative answer of another kind than the query"))
            }
        }
        Some(Frame::Error { code, message, .. }) => {
            Err(Error::AdminRefused { code, message: sanitize(&message) })
        }
        Some(other) => Err(unexpected(&other, "an Admin query")),
        None => Err(Error::ConnectionLost { reason: "the broker ended the stream before answering".into() }),
    }
}
