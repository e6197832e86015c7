//! `sealpost admin ...`: an operator's view of a running broker: its totals, topics, durable subscriptions
//! and open connections, as aligned tables, or with `--json` as one JSON document (an object for `stats`,
//! an array of rows for the lists). Needs an identity whose principal the broker's ACL grants `admin` on
//! every topic. Lists are read page by page until the broker says there is no more.

use anyhow::{bail, Context as _};
use sealpost_client::protocol::{
    AdminAnswer, AdminQuery, ConnectionStats, DurableKey, DurableStats, TopicStats, ADMIN_PAGE,
};
use sealpost_client::Client;
use serde::Serialize;

/// What to show.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum What {
    /// The broker's totals.
    Stats,
    /// Topics that hold messages.
    Topics,
    /// Durable subscriptions, with their lag.
    Subscriptions,
    /// Open connections.
    Connections,
}

/// Most pages read for one list: far more rows than a broker holds in memory to answer (a broker that
/// says "more" forever is not followed forever).
const MAX_PAGES: usize = 1 << 16;

pub(crate) async fn run(client: &Client, what: What, json: bool) -> anyhow::Result<()> {
    match what {
        What::Stats => {
            let AdminAnswer::Stats(stats) = client.admin(AdminQuery::Stats).await? else {
                bail!("the broker answered stats with another kind of answer");
            };
            if json {
                return print_json(&stats);
            }
            let rows = [
                ("version", stats.version.clone()),
                ("uptime", seconds(stats.uptime_ms)),
                ("connections", stats.connections.to_string()),
                ("principals", stats.principals.to_string()),
                ("topics", stats.topics.to_string()),
                ("stored messages", stats.stored_messages.to_string()),
                ("syncs", stats.syncs.to_string()),
            ];
            print!("{}", table(&["what", "value"], rows.iter().map(|(k, v)| vec![k.to_string(), v.clone()])));
        }
        What::Topics => {
            let rows = pages(
                client,
                |after: Option<&TopicStats>| AdminQuery::Topics { after: after.map(|r| r.topic.clone()) },
                |answer| match answer {
                    AdminAnswer::Topics { rows, more } => Some((rows, more)),
                    _ => None,
                },
            )
            .await?;
            let headers = ["topic", "first offset", "next offset", "messages", "epoch"];
            show(&rows, json, &headers, |r| {
                vec![
                    r.topic.to_string(),
                    r.first_offset.0.to_string(),
                    r.next_offset.0.to_string(),
                    r.next_offset.0.saturating_sub(r.first_offset.0).to_string(),
                    r.epoch.map_or("-".into(), |e| e.0.to_string()),
                ]
            })?;
        }
        What::Subscriptions => {
            let rows = pages(
                client,
                |after: Option<&DurableStats>| AdminQuery::Subscriptions {
                    after: after.map(|r| r.key.clone()),
                },
                |answer| match answer {
                    AdminAnswer::Subscriptions { rows, more } => Some((rows, more)),
                    _ => None,
                },
            )
            .await?;
            show(&rows, json, &["topic", "principal", "name", "committed", "lag"], |r| {
                let DurableKey { topic, principal, name } = &r.key;
                vec![
                    topic.to_string(),
                    principal.to_string(),
                    name.clone(),
                    r.committed.0.to_string(),
                    r.lag.to_string(),
                ]
            })?;
        }
        What::Connections => {
            let rows = pages(
                client,
                |after: Option<&ConnectionStats>| AdminQuery::Connections { after: after.map(|r| r.id) },
                |answer| match answer {
                    AdminAnswer::Connections { rows, more } => Some((rows, more)),
                    _ => None,
                },
            )
            .await?;
            show(&rows, json, &["id", "principal", "remote", "age"], |r| {
                vec![r.id.to_string(), r.principal.to_string(), r.remote.clone(), seconds(r.age_ms)]
            })?;
        }
    }
    Ok(())
}

/// Every row of a list: pages asked with `query(last row so far)`, read with `rows` (`None`: an answer of
/// another kind), until one says there is no more. A page that is empty or oversized while more are
/// promised is an error, as is more than [`MAX_PAGES`] pages.
async fn pages<R>(
    client: &Client,
    query: impl Fn(Option<&R>) -> AdminQuery,
    rows: impl Fn(AdminAnswer) -> Option<(Vec<R>, bool)>,
) -> anyhow::Result<Vec<R>> {
    let mut all = Vec::new();
    for _ in 0..MAX_PAGES {
        let answer = client.admin(query(all.last())).await?;
        let (page, more) = rows(answer).context("the broker answered with another kind of answer")?;
        if page.len() > ADMIN_PAGE || (more && page.is_empty()) {
            bail!("the broker answered with a page of {} rows that says more follow: {more}", page.len());
        }
        all.extend(page);
        if !more {
            return Ok(all);
        }
    }
    bail!("the broker said more rows follow after {MAX_PAGES} pages")
}

/// `rows` as JSON (an array), or as a table under `headers` with `cells` of each row.
fn show<R: Serialize>(
    rows: &[R],
    json: bool,
    headers: &[&str],
    cells: impl Fn(&R) -> Vec<String>,
) -> anyhow::Result<()> {
    if json {
        return print_json(&rows);
    }
    print!("{}", table(headers, rows.iter().map(cells)));
    Ok(())
}

/// Milliseconds as seconds with one decimal: `2.9 s`.
fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `rows` under `headers`, each column as wide as its widest cell, two spaces apart; numbers are
/// right-aligned (a cell that parses as a number, or "-").
fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let numeric: Vec<bool> = (0..headers.len())
        .map(|i| {
            !rows.is_empty()
                && rows.iter().all(|r| {
                    r.get(i).is_some_and(|c| c == "-" || c.trim_end_matches(" s").parse::<f64>().is_ok())
                })
        })
        .collect();
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let width = widths[i];
            if i > 0 {
                out.push_str("  ");
            }
            if numeric[i] {
                out.push_str(&format!("{cell:>width$}"));
            } else {
                out.push_str(&format!("{cell:<width$}"));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_aligns_its_columns_and_right_aligns_numbers() {
        let rows = vec![
            vec!["demo.chat".to_string(), "12".into()],
            vec!["demo.longer.topic".to_string(), "3".into()],
        ];
        assert_eq!(
            table(&["topic", "messages"], rows.into_iter()),
            "topic              messages\ndemo.chat                12\ndemo.longer.topic         3\n"
        );
        assert_eq!(table(&["id", "remote"], std::iter::empty()), "id  remote\n");
    }
}
