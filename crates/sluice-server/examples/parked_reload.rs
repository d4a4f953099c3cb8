//! Load tool for `benches/parked_reload.sh`: parks many LL-HLS blocking playlist
//! requests on a running server at once, over HTTP/2 (many streams per connection, as a
//! CDN's shield or many Safari players would), then measures what they cost while
//! parked (the server's resident memory, from `/proc`) and how fast they are released
//! when the part they wait for lands.
//!
//!   parked_reload <media playlist URL> <server pid> [requests] [connections]
//!
//! Prints a table and a last line `BENCH_JSON {...}`.

// A command-line tool: its report is its standard output.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of the server, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(url), Some(pid)) = (args.get(1), args.get(2).and_then(|p| p.parse::<u32>().ok()))
    else {
        eprintln!(
            "usage: parked_reload <media playlist URL> <server pid> [requests] [connections]"
        );
        std::process::exit(2);
    };
    let requests: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let connections: usize = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(100);
    let uri: hyper::Uri = url.parse().expect("a URL");
    let authority = uri.authority().expect("host:port").to_string();
    let path = uri.path().to_owned();

    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(&authority)
            .await
            .expect("connect");
        tcp.set_nodelay(true).ok();
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .max_concurrent_reset_streams(0)
            .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
            .await
            .expect("HTTP/2 handshake (h2c)");
        tokio::spawn(conn);
        send
    };
    let get = |send: hyper::client::conn::http2::SendRequest<Empty<Bytes>>, target: String| {
        let authority = authority.clone();
        async move {
            let req = Request::get(format!("http://{authority}{target}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let mut send = send;
            send.ready().await.ok()?;
            let resp = send.send_request(req).await.ok()?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            Some((status, body))
        }
    };

    // Where the playlist is: park on the third part of the segment after the open one:
    // one to three seconds away with 2 s segments of 0.5 s parts, so that every request
    // is parked before it lands (and not so far ahead that it would be refused).
    let first = connect().await;
    let (_, body) = get(first.clone(), path.clone()).await.expect("playlist");
    let text = String::from_utf8_lossy(&body);
    let complete: u64 = text
        .lines()
        .rfind(|l| !l.starts_with('#') && !l.is_empty())
        .and_then(|l| l.trim_end_matches(".m4s").parse().ok())
        .expect("an LL-HLS playlist with segments");
    let target = format!("{path}?_HLS_msn={}&_HLS_part=2", complete + 2);

    let rss_before = proc_status(pid, "VmRSS:");
    let mut senders = vec![first];
    for _ in 1..connections {
        senders.push(connect().await);
    }
    let rss_connected = proc_status(pid, "VmRSS:");
    let sent_at = Instant::now();
    let mut tasks = Vec::with_capacity(requests);
    for i in 0..requests {
        let fut = get(senders[i % connections].clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let r = fut.await;
            (Instant::now(), r.map(|(s, b)| (s, b.len())))
        }));
    }
    // Let every request reach the server and park.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let parked_for = sent_at.elapsed();
    let rss_parked = proc_status(pid, "VmRSS:");
    let cpu_parked = cpu_ticks(pid);
    let mut done = Vec::with_capacity(requests);
    for t in tasks {
        done.push(t.await.expect("task"));
    }
    let cpu_released = cpu_ticks(pid);
    let ok = done
        .iter()
        .filter(|(_, r)| matches!(r, Some((200, _))))
        .count();
    let mut statuses = std::collections::BTreeMap::new();
    for (_, r) in &done {
        *statuses.entry(r.map_or(0, |(s, _)| s)).or_insert(0) += 1;
    }
    let early = done
        .iter()
        .filter(|(t, _)| t.duration_since(sent_at) < parked_for)
        .count();
    let first_done = done.iter().map(|(t, _)| *t).min().unwrap();
    let mut spread: Vec<f64> = done
        .iter()
        .map(|(t, _)| t.duration_since(first_done).as_secs_f64() * 1000.0)
        .collect();
    spread.sort_by(f64::total_cmp);
    let ticks = 100.0; // USER_HZ on Linux
    let per_request_kib = (rss_parked.saturating_sub(rss_connected)) as f64 / requests as f64;
    println!(
        "parked {requests} blocking requests over {connections} HTTP/2 connections on {target}"
    );
    println!(
        "  answered 200: {ok} (answered before the part landed: {early}); statuses {statuses:?}"
    );
    println!(
        "  server RSS: {rss_before} KiB before, {rss_connected} KiB connected, {rss_parked} KiB parked: {per_request_kib:.2} KiB per parked request"
    );
    println!(
        "  release after the part landed (first answer = 0): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&spread, 0.5),
        percentile(&spread, 0.99),
        percentile(&spread, 1.0)
    );
    println!(
        "  server CPU to release them: {:.2} s",
        (cpu_released - cpu_parked) as f64 / ticks
    );
    println!(
        "BENCH_JSON {{\"requests\":{requests},\"connections\":{connections},\"ok\":{ok},\"early\":{early},\"rss_before_kib\":{rss_before},\"rss_connected_kib\":{rss_connected},\"rss_parked_kib\":{rss_parked},\"kib_per_parked\":{per_request_kib:.3},\"release_p50_ms\":{:.2},\"release_p99_ms\":{:.2},\"release_max_ms\":{:.2},\"release_cpu_s\":{:.3}}}",
        percentile(&spread, 0.5),
        percentile(&spread, 0.99),
        percentile(&spread, 1.0),
        (cpu_released - cpu_parked) as f64 / ticks
    );
}
