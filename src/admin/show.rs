//! `ncx status` for people: the admin endpoint's JSON as short tables.

use std::fmt::Write as _;

use super::{ClientStatus, ServerStatus};

/// The answer of an admin endpoint (server or client) in words; `now` is the epoch second the
/// ages are counted to.
pub fn human(answer: &str, now: u64) -> anyhow::Result<String> {
    let kind: serde_json::Value = serde_json::from_str(answer)?;
    Ok(match kind["kind"].as_str() {
        Some("server") => server(&serde_json::from_str(answer)?, now),
        Some("client") => client(&serde_json::from_str(answer)?, now),
        _ => anyhow::bail!("not an ncx status answer: {answer:.200}"),
    })
}

fn server(s: &ServerStatus, now: u64) -> String {
    let mut out = format!(
        "ncx server on {}, fingerprint {}\n{} session(s)\n",
        s.listen,
        s.fingerprint,
        s.sessions.len()
    );
    if s.sessions.is_empty() {
        return out;
    }
    let rows: Vec<[String; 7]> = s
        .sessions
        .iter()
        .map(|x| {
            [
                x.identity.clone(),
                x.address.clone(),
                age(now.saturating_sub(x.since)),
                x.visitors.to_string(),
                format!("{}/{}", bytes(x.bytes_in), bytes(x.bytes_out)),
                x.rtt_ms.map_or("-".into(), |r| format!("{r:.1} ms")),
                x.services.join(", "),
            ]
        })
        .collect();
    table(
        &mut out,
        [
            "IDENTITY", "ADDRESS", "UP", "VISITORS", "IN/OUT", "RTT", "SERVICES",
        ],
        &rows,
    );
    if !s.groups.is_empty() {
        let rows: Vec<[String; 4]> = s
            .groups
            .iter()
            .map(|g| {
                [
                    g.name.clone(),
                    match g.port {
                        Some(p) => format!("{}:{p}", g.service),
                        None => format!("{} (private)", g.service),
                    },
                    g.balance.clone(),
                    g.members.join(", "),
                ]
            })
            .collect();
        out.push('\n');
        table(&mut out, ["GROUP", "SERVICE", "BALANCE", "MEMBERS"], &rows);
    }
    out
}

fn client(c: &ClientStatus, now: u64) -> String {
    if !c.servers.is_empty() {
        // Several servers: a block for each.
        let mut out = String::new();
        for s in &c.servers {
            let one = ClientStatus {
                visits: Vec::new(),
                ..s.clone()
            };
            out.push_str(&client(&one, now));
        }
        for v in &c.visits {
            let _ = writeln!(out, "visit {v}");
        }
        return out;
    }
    let state = if c.connected {
        format!("connected for {}", age(now.saturating_sub(c.since)))
    } else {
        format!(
            "not connected ({})",
            c.last_error.as_deref().unwrap_or("first attempt under way")
        )
    };
    let mut out = format!(
        "ncx client {} -> {}: {state}\nserver verified by {}\n",
        c.identity, c.server, c.server_verified_by
    );
    for s in &c.services {
        let _ = writeln!(out, "service {s}");
    }
    for v in &c.visits {
        let _ = writeln!(out, "visit {v}");
    }
    out
}

/// Columns padded to their widest cell; the last one is not padded.
fn table<const N: usize>(out: &mut String, head: [&str; N], rows: &[[String; N]]) {
    let mut widths = head.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(head.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::SessionStatus;

    #[test]
    fn a_server_is_a_table_of_its_sessions() {
        let s = ServerStatus {
            groups: Vec::new(),
            kind: "server".into(),
            listen: "0.0.0.0:7835".into(),
            fingerprint: "sha256:ab".into(),
            sessions: vec![SessionStatus {
                identity: "office".into(),
                address: "203.0.113.7:50122".into(),
                since: 1000,
                services: vec!["rdp:13389".into(), "ssh (private)".into()],
                visitors: 2,
                bytes_in: 3 * 1024 * 1024,
                bytes_out: 512,
                rtt_ms: Some(48.25),
            }],
        };
        let text = human(&serde_json::to_string(&s).unwrap(), 1000 + 3700).unwrap();
        assert_eq!(
            text,
            "ncx server on 0.0.0.0:7835, fingerprint sha256:ab\n1 session(s)\n\
             IDENTITY  ADDRESS            UP   VISITORS  IN/OUT         RTT      SERVICES\n\
             office    203.0.113.7:50122  61m  2         3.0 MiB/512 B  48.2 ms  rdp:13389, ssh (private)\n"
        );
    }
}
