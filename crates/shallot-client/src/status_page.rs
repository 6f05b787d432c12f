//! The client's live status for people: an HTML page at `/` of the metrics address that
//! refreshes itself from `GET /status` (bootstrap, relays known, circuits with their hops and
//! age, streams, bytes, and a graph of the last minutes' throughput), and the same as text
//! (`GET /status.txt`, what `shallot status` prints).
//!
//! Like `/status`, the page names the relays of each circuit and never a destination: the
//! client keeps none to show. Browsers reach it by IP address or `localhost` only (see
//! [`host_allowed`]).

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::metrics::{Snapshot, Status, THROUGHPUT_INTERVAL};

/// Whether a request's `Host` header may be answered: none (not a browser), an IP address or
/// `localhost`, with or without a port. A web page that rebinds its own name to 127.0.0.1
/// sends that name, and so cannot read which relays this client uses.
pub(crate) fn host_allowed(host: Option<&str>) -> bool {
    let Some(host) = host else {
        return true;
    };
    let host = host.trim();
    // `[v6]:port`, `[v6]`, `v4:port`, `v4`, `name:port`, `name`.
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inside, after)) if after.is_empty() || after.starts_with(':') => inside,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return false,
            None => host,
        }
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

/// `n` bytes for people: `512 B`, `1.5 KiB`, `50.0 MiB`, `2.00 GiB`.
fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{value:.0} {}", UNITS[unit]),
        _ if value < 10.0 => format!("{value:.2} {}", UNITS[unit]),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// A PeerId shortened for a table: its first 8 and last 6 characters.
fn short_peer(peer: &str) -> String {
    let chars: Vec<char> = peer.chars().collect();
    if chars.len() <= 16 {
        return peer.to_owned();
    }
    let head: String = chars[..8].iter().collect();
    let tail: String = chars[chars.len() - 6..].iter().collect();
    format!("{head}…{tail}")
}

/// One line of block characters, a sample each, scaled to the largest.
fn sparkline(samples: &[u64]) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let peak = samples.iter().copied().max().unwrap_or(0);
    samples
        .iter()
        .map(|&s| {
            if peak == 0 || s == 0 {
                ' '
            } else {
                let level = (s as f64 / peak as f64 * 7.0).round() as usize;
                BLOCKS[level.min(7)]
            }
        })
        .collect()
}

/// The status as text for a terminal (`shallot status`).
pub(crate) fn render_text(status: &Status, snapshot: &Snapshot) -> String {
    // Writing into a String cannot fail.
    let mut out = String::new();
    let _ = writeln!(out, "Shallot client");
    let _ = writeln!(
        out,
        "  bootstrap   {}%: {}",
        status.bootstrap.percent, status.bootstrap.summary
    );
    for peer in &status.bootstrap_peers {
        let _ = writeln!(out, "    peer      {}  {}", peer.addr, peer.state);
    }
    let _ = writeln!(out, "  relays      {} known", snapshot.relays_known);
    let _ = writeln!(out, "  streams     {} open", snapshot.streams_open);
    let _ = writeln!(
        out,
        "  bytes       {} down, {} up",
        human_bytes(snapshot.bytes_down as f64),
        human_bytes(snapshot.bytes_up as f64)
    );
    // The last minute, a character per sample.
    let secs = THROUGHPUT_INTERVAL.as_secs_f64();
    let last = (60.0 / secs) as usize;
    let recent = &snapshot.throughput[snapshot.throughput.len().saturating_sub(last)..];
    for (label, pick) in [("down", 1usize), ("up", 0usize)] {
        let samples: Vec<u64> = recent
            .iter()
            .map(|s| if pick == 1 { s.1 } else { s.0 })
            .collect();
        let peak = samples.iter().copied().max().unwrap_or(0);
        let _ = writeln!(
            out,
            "  {label:<4}        |{}| last {:.0} s, peak {}/s",
            sparkline(&samples),
            samples.len() as f64 * secs,
            human_bytes(peak as f64 / secs)
        );
    }
    let _ = writeln!(out, "circuits ({})", status.circuits.len());
    for c in &status.circuits {
        let hops: Vec<String> = c.path.iter().map(|p| short_peer(&p.to_string())).collect();
        let _ = writeln!(
            out,
            "  #{:<5} {:<8} {:>3} streams {:>6} s  {}",
            c.id,
            if c.built { "built" } else { "building" },
            c.streams,
            c.age.as_secs(),
            hops.join(" > ")
        );
    }
    let _ = writeln!(out, "guards ({})", status.guards.len());
    for (peer, bias) in &status.guards {
        let _ = writeln!(
            out,
            "  {}  path bias {}, built {}/{}",
            short_peer(&peer.to_string()),
            bias.state().as_str(),
            bias.circ_built(),
            bias.circ_attempts()
        );
    }
    out
}

/// The page at `/`. It reads `/status` every second and writes what it got with `textContent`
/// and SVG attributes only, never as markup.
pub(crate) const PAGE_HTML: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Shallot client</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;background:#faf8f3;color:#222}
h1{font-size:1.4em;margin:0 0 .6em} h2{font-size:1.1em;margin:1.2em 0 .4em}
table{border-collapse:collapse} td,th{padding:.2em .8em .2em 0;text-align:left;vertical-align:top}
th{font-weight:600;color:#555} .mono{font-family:ui-monospace,monospace;font-size:.9em}
#graph{background:#fff;border:1px solid #ccc} .down{stroke:#2a6f97} .up{stroke:#c44536}
.legend span{margin-right:1.2em} #error{color:#b00}
</style></head>
<body>
<h1>Shallot client</h1>
<p id="error"></p>
<table>
<tr><th>bootstrap</th><td id="bootstrap">…</td></tr>
<tr><th>bootstrap peers</th><td id="peers" class="mono"></td></tr>
<tr><th>relays known</th><td id="relays">…</td></tr>
<tr><th>streams open</th><td id="streams">…</td></tr>
<tr><th>bytes</th><td id="bytes">…</td></tr>
</table>
<h2>Throughput, last minutes</h2>
<svg id="graph" width="640" height="160" viewBox="0 0 640 160" role="img" aria-label="throughput">
<polyline id="down-line" class="down" fill="none" stroke-width="2" points=""/>
<polyline id="up-line" class="up" fill="none" stroke-width="2" points=""/>
</svg>
<p class="legend"><span class="down-key">— down <b id="down-now">0 B/s</b></span>
<span class="up-key">— up <b id="up-now">0 B/s</b></span><span id="peak"></span></p>
<h2>Circuits (<span id="circuit-count">0</span>)</h2>
<table id="circuits"><thead><tr><th>id</th><th>state</th><th>streams</th><th>age</th><th>hops (guard first)</th></tr></thead><tbody></tbody></table>
<h2>Guards</h2>
<table id="guards"><thead><tr><th>guard</th><th>path bias</th><th>built</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
function human(n){const u=["B","KiB","MiB","GiB","TiB"];let i=0;while(n>=1024&&i<u.length-1){n/=1024;i++;}
 return (i===0?n.toFixed(0):n<10?n.toFixed(2):n.toFixed(1))+" "+u[i];}
function cell(row,text,mono){const td=document.createElement("td");td.textContent=text;if(mono)td.className="mono";row.appendChild(td);}
function fill(id,rows){const body=document.querySelector("#"+id+" tbody");body.replaceChildren();
 for(const r of rows){const tr=document.createElement("tr");for(const [t,m] of r)cell(tr,t,m);body.appendChild(tr);}}
function line(id,samples,peak,secs){const w=640,h=160,n=samples.length;if(n===0){document.getElementById(id).setAttribute("points","");return;}
 const pts=samples.map((s,i)=>{const x=n===1?w:(i*(w-1)/(n-1));const y=h-2-(peak>0?(s/secs)/peak*(h-8):0);return x.toFixed(1)+","+y.toFixed(1);});
 document.getElementById(id).setAttribute("points",pts.join(" "));}
async function refresh(){
 try{
  const r=await fetch("/status",{cache:"no-store"});const s=await r.json();
  document.getElementById("error").textContent="";
  document.getElementById("bootstrap").textContent=s.bootstrap.percent+"%: "+s.bootstrap.summary;
  document.getElementById("peers").textContent=s.bootstrap.peers.map(p=>p.addr+"  "+p.state).join("\n");
  document.getElementById("relays").textContent=s.relays_known;
  document.getElementById("streams").textContent=s.streams_open;
  document.getElementById("bytes").textContent=human(s.bytes.down)+" down, "+human(s.bytes.up)+" up";
  const t=s.throughput,secs=t.interval_secs;
  const peak=Math.max(1,...t.down.map(x=>x/secs),...t.up.map(x=>x/secs));
  line("down-line",t.down,peak,secs);line("up-line",t.up,peak,secs);
  document.getElementById("down-now").textContent=human((t.down[t.down.length-1]||0)/secs)+"/s";
  document.getElementById("up-now").textContent=human((t.up[t.up.length-1]||0)/secs)+"/s";
  document.getElementById("peak").textContent="peak "+human(peak)+"/s over "+(t.down.length*secs)+" s";
  document.getElementById("circuit-count").textContent=s.circuits.length;
  fill("circuits",s.circuits.map(c=>[[String(c.id)],[c.built?"built":"building"],[String(c.streams)],[c.age_secs+" s"],[c.hops.join(" → "),true]]));
  fill("guards",s.guards.map(g=>[[g.peer,true],[g.path_bias],[g.circ_built+"/"+g.circ_attempts]]));
  document.body.dataset.refreshed=String(Date.now());
 }catch(e){document.getElementById("error").textContent="cannot read /status: "+e;}
}
refresh();setInterval(refresh,1000);
</script>
</body></html>
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_literals_and_localhost_are_answered() {
        for ok in [
            None,
            Some("127.0.0.1"),
            Some("127.0.0.1:9052"),
            Some("[::1]:9052"),
            Some("[::1]"),
            Some("localhost:9052"),
            Some("LOCALHOST"),
            Some("10.1.2.3:80"),
        ] {
            assert!(host_allowed(ok), "{ok:?}");
        }
        for refused in [
            Some("evil.example:9052"),
            Some("evil.example"),
            Some("127.0.0.1.nip.io:9052"),
            Some("localhost.evil.example"),
            Some("[::1]x"),
            Some("127.0.0.1:port"),
            Some(""),
        ] {
            assert!(!host_allowed(refused), "{refused:?}");
        }
    }

    #[test]
    fn bytes_read_for_people() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.50 KiB");
        assert_eq!(human_bytes(50.0 * 1048576.0), "50.0 MiB");
        assert_eq!(human_bytes(3.0 * 1073741824.0), "3.00 GiB");
    }

    #[test]
    fn the_sparkline_scales_to_its_peak() {
        assert_eq!(sparkline(&[0, 1, 4, 8]), " ▂▅█");
        assert_eq!(sparkline(&[0, 0]), "  ");
        assert_eq!(sparkline(&[]), "");
    }

    #[test]
    fn the_page_writes_data_as_text_only() {
        assert!(!PAGE_HTML.contains("innerHTML"));
        assert!(PAGE_HTML.contains("fetch(\"/status\""));
    }
}
