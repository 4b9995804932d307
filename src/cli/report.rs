//! The self-contained HTML report of `geowall audit --html`: a world map
//! (embedded SVG, no network access) with each country coloured by what
//! happened to the flows whose servers are located there, what was blocked
//! and why, the identifier leaks, and every flow. All text that comes from
//! the capture is escaped.

use std::collections::BTreeMap;
use std::fmt::Write;

use geowall::engine::Counters;

use super::audit::Row;

/// The map: "Map of World", @svg-maps/world 2.0.0, CC BY 4.0 (see
/// rules/map/LICENSE).
pub(crate) const WORLD_SVG: &str = include_str!("../../rules/map/world.svg");

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// The map with a tooltip (an SVG `<title>`) on every country: its name,
/// and for those with servers in the capture, how many flows, how many
/// would have been blocked and how many leaked identifiers.
fn map_with_titles(svg: &str, by_country: &BTreeMap<String, (usize, usize, usize)>) -> String {
    let mut out = String::with_capacity(svg.len() + 64 * 256);
    let mut rest = svg;
    while let Some(start) = rest.find("<path") {
        let Some(len) = rest[start..].find("/>") else {
            break;
        };
        let path = &rest[start..start + len];
        let attr = |name: &str| {
            let key = format!("{name}=\"");
            let i = path.find(&key)? + key.len();
            path[i..].find('"').map(|j| &path[i..i + j])
        };
        out.push_str(&rest[..start]);
        out.push_str(path);
        match (attr("id"), attr("aria-label")) {
            (Some(id), Some(name)) => {
                let what = match by_country.get(id) {
                    Some((flows, blocked, leaking)) => format!(
                        "{flows} flow{}, {blocked} would have been blocked, {leaking} leaked identifiers",
                        if *flows == 1 { "" } else { "s" }
                    ),
                    None => "no servers in the capture".to_owned(),
                };
                let _ = write!(
                    out,
                    "><title>{} ({}): {what}</title></path>",
                    esc(name),
                    id.to_ascii_uppercase()
                );
            }
            _ => out.push_str("/>"),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Builds the page.
pub(crate) fn html(title: &str, policy: &str, rows: &[Row], counters: &Counters) -> String {
    // Per country: (flows, blocked, leaking).
    let mut by_country: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for r in rows {
        for c in &r.geo {
            let e = by_country.entry(c.to_ascii_lowercase()).or_default();
            e.0 += 1;
            e.1 += usize::from(r.blocked);
            e.2 += usize::from(!r.leaks.is_empty());
        }
    }
    let mut css = String::new();
    for (cc, (_, blocked, leaking)) in &by_country {
        // Country codes come from our database: two lowercase letters.
        if cc.len() == 2 && cc.bytes().all(|b| b.is_ascii_lowercase()) {
            let colour = if *blocked > 0 {
                "#c0392b"
            } else if *leaking > 0 {
                "#e67e22"
            } else {
                "#2e86c1"
            };
            let _ = writeln!(css, "#map path#{cc} {{ fill: {colour}; }}");
        }
    }
    let map = map_with_titles(WORLD_SVG, &by_country);
    let blocked = rows.iter().filter(|r| r.blocked).count();
    let leaking = rows.iter().filter(|r| !r.leaks.is_empty()).count();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>geowall audit: {t}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;font-size:.9em}}\
         td,th{{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}} th{{background:#f4f4f4}}\
         .block{{color:#c0392b;font-weight:bold}} .legend span{{display:inline-block;width:1em;height:1em;margin:0 .3em 0 1em;vertical-align:middle}}\
         #map{{max-width:100%;border:1px solid #ddd}} #map svg{{width:100%;height:auto}} #map path{{fill:#ddd;stroke:#fff;stroke-width:.3}}\
         {css}</style></head><body>",
        t = esc(title)
    );
    let _ = write!(
        h,
        "<h1>What this capture shows</h1><p>Capture <b>{}</b>, judged by the policy <b>{}</b>: {} flows; \
         <span class=\"block\">{} would have been blocked</span>; {} carried one of your identifiers in cleartext.</p>",
        esc(title),
        esc(policy),
        rows.len(),
        blocked,
        leaking
    );
    let _ = write!(
        h,
        "<h2>Where the servers are</h2><p class=\"legend\">Countries where servers were located:\
         <span style=\"background:#c0392b\"></span>some traffic would have been blocked\
         <span style=\"background:#e67e22\"></span>identifiers leaked, not blocked\
         <span style=\"background:#2e86c1\"></span>allowed (point at a country for its numbers)</p><div id=\"map\">{map}</div>\
         <p><small>Map: &ldquo;Map of World&rdquo; by Victor Cazanave (@svg-maps/world), CC BY 4.0.</small></p>"
    );
    // Blocked, grouped by rule.
    let mut by_rule: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.blocked) {
        by_rule
            .entry(r.rule.as_deref().unwrap_or("(the policy's default)"))
            .or_default()
            .push(r);
    }
    h.push_str("<h2>What would have been blocked, and why</h2>");
    if by_rule.is_empty() {
        h.push_str("<p>Nothing.</p>");
    }
    for (rule, rs) in &by_rule {
        let n = if rs.len() == 1 {
            "1 flow".to_owned()
        } else {
            format!("{} flows", rs.len())
        };
        let _ = write!(
            h,
            "<h3>{} ({n})</h3><table><tr><th>server</th><th>name</th><th>class</th><th>because</th><th>jurisdiction (all layers)</th></tr>",
            esc(rule)
        );
        for r in rs {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.server),
                esc(r.server_name.as_deref().unwrap_or("-")),
                esc(r.class),
                esc(r.why.as_deref().unwrap_or("-")),
                esc(&r.countries.join(", "))
            );
        }
        h.push_str("</table>");
    }
    let refusing: Vec<&Row> = rows
        .iter()
        .filter(|r| !r.refused_peers.is_empty())
        .collect();
    if !refusing.is_empty() {
        h.push_str("<h2>Relays' peers that would have been refused</h2><p>The relay's messages naming these peers would have been dropped; the relay went on for its other peers.</p>");
        h.push_str("<table><tr><th>relay</th><th>class</th><th>peers refused</th></tr>");
        for r in refusing {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.server),
                esc(r.class),
                esc(&r.refused_peers.join("; "))
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Identifiers sent in cleartext</h2>");
    if leaking == 0 {
        h.push_str("<p>None found (only identifiers given with <code>--identifier</code> are looked for).</p>");
    } else {
        h.push_str("<table><tr><th>server</th><th>name</th><th>identifier</th><th>encoding</th><th>at byte</th></tr>");
        for r in rows {
            for (label, enc, off) in &r.leaks {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{off}</td></tr>",
                    esc(&r.server),
                    esc(r.server_name.as_deref().unwrap_or("-")),
                    esc(label),
                    esc(enc)
                );
            }
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Every flow</h2><table><tr><th>proto</th><th>client</th><th>server</th><th>protocol</th><th>class</th><th>name</th><th>jurisdiction</th><th>verdict</th></tr>");
    for r in rows {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td{}>{}</td></tr>",
            r.proto,
            esc(&r.client),
            esc(&r.server),
            esc(r.protocol),
            esc(r.class),
            esc(r.server_name.as_deref().unwrap_or("-")),
            esc(&r.countries.join(", ")),
            if r.blocked { " class=\"block\"" } else { "" },
            if r.blocked { "block" } else { "allow" }
        );
    }
    let _ = write!(
        h,
        "</table><p><small>{} IP fragments (inspected once reassembled); not inspected: {} packets of other IP protocols, {} malformed packets, {} flows over the limit. \
         Produced by geowall audit; jurisdiction data: see rules/world/LICENSE.</small></p></body></html>",
        counters.fragments,
        counters.other_protocols,
        counters.drops.values().sum::<u64>(),
        counters.refused_flows
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<script>alert('x')&\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;)&amp;&quot;&lt;/script&gt;"
        );
    }

    #[test]
    fn every_country_gets_a_tooltip_and_the_map_stays_whole() {
        let mut by = BTreeMap::new();
        by.insert("cn".to_owned(), (3, 2, 1));
        by.insert("us".to_owned(), (1, 0, 0));
        let m = map_with_titles(WORLD_SVG, &by);
        assert_eq!(
            m.matches("<title>").count(),
            WORLD_SVG.matches("<path").count()
        );
        assert!(m.contains(
            "<title>China (CN): 3 flows, 2 would have been blocked, 1 leaked identifiers</title></path>"
        ));
        assert!(m.contains("(US): 1 flow, 0 would have been blocked"));
        assert!(m.contains("<title>Andorra (AD): no servers in the capture</title>"));
        assert!(!m.contains("/>"), "every path closed with its title");
        assert!(m.trim_end().ends_with("</svg>"));
    }
}
