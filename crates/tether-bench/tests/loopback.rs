//! Each workload against a real server on a loopback socket (see `support`).

mod support;

use support::{spawn, Behaviour};
use tether_bench::{run_broadcast, run_connections, run_echo, BroadcastArgs, BroadcastMode, ConnectionsArgs, EchoArgs, Report};

fn echo_args(url: String) -> EchoArgs {
    EchoArgs {
        url,
        connections: 4,
        size: 100,
        duration: 1.0,
        pipeline: 2,
        binary: false,
        text: false,
        warmup: 0.2,
        verify_every: 1,
        pid: None,
        source_ips: 1,
        connect_timeout: 5.0,
        json: false,
    }
}

fn broadcast_args(url: String, mode: BroadcastMode) -> BroadcastArgs {
    BroadcastArgs {
        url,
        clients: 6,
        mode,
        senders: None,
        publishers: 1,
        rate: 50.0,
        size: 64,
        duration: 1.0,
        warmup: 0.2,
        drain: 2.0,
        exclude_sender: false,
        pid: None,
        source_ips: 1,
        connect_timeout: 5.0,
        json: false,
    }
}

#[test]
fn echo_measures_round_trips() {
    let args = echo_args(spawn(Behaviour::Echo));
    let report = run_echo(&args).unwrap();
    let Report::Echo(r) = &report else { panic!("{report:?}") };
    assert!(!report.had_errors(), "{report:?}");
    assert_eq!(r.connect.connected, 4);
    assert!(r.messages > 100, "{r:?}");
    assert_eq!(r.latency.count, r.messages);
    assert!(r.latency.p50_us > 0.0 && r.latency.p50_us <= r.latency.p99_us && r.latency.p99_us <= r.latency.max_us);
    assert!((r.duration_secs - 1.0).abs() < 0.1, "{r:?}");
    assert!(r.messages_per_sec > 0.0 && r.mb_per_sec_one_way > 0.0);
    assert!(r.client_cpu_percent.is_some());
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["bench"], "echo");
}

#[test]
fn echo_text_and_messages_shorter_than_the_sequence_stamp() {
    let mut args = echo_args(spawn(Behaviour::Echo));
    args.text = true;
    args.size = 5;
    args.duration = 0.5;
    args.pipeline = 8;
    let report = run_echo(&args).unwrap();
    let Report::Echo(r) = &report else { panic!() };
    assert!(!report.had_errors() && r.messages > 0 && r.text, "{report:?}");
}

#[test]
fn echo_counts_corrupted_replies_as_errors() {
    let mut args = echo_args(spawn(Behaviour::CorruptLastByte));
    args.duration = 0.3;
    args.verify_every = 16;
    let report = run_echo(&args).unwrap();
    let Report::Echo(r) = &report else { panic!() };
    assert!(report.had_errors());
    assert!(r.errors.mismatched_echoes > 0, "{r:?}");
    assert!(r.errors.first_error.as_deref().unwrap().contains("differs"), "{r:?}");
}

#[test]
fn echo_counts_server_closes_as_errors() {
    let mut args = echo_args(spawn(Behaviour::CloseAfter(3)));
    args.duration = 0.3;
    let report = run_echo(&args).unwrap();
    assert_eq!(report.errors().unexpected_closes, 4, "{report:?}");
    assert!(report.errors().first_error.as_deref().unwrap().contains("1001"), "{report:?}");
}

#[test]
fn echo_fails_clearly_when_nothing_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = run_echo(&echo_args(format!("ws://127.0.0.1:{port}/"))).unwrap_err().to_string();
    assert!(err.contains("no connection") && err.contains("refused"), "{err}");
}

#[test]
fn connections_open_and_hold() {
    let args = ConnectionsArgs {
        url: spawn(Behaviour::Echo),
        count: 50,
        pid: None,
        hold: 0.3,
        rate: None,
        concurrency: 16,
        source_ips: 1,
        connect_timeout: 5.0,
        json: false,
    };
    let report = run_connections(&args).unwrap();
    let Report::Connections(r) = &report else { panic!() };
    assert!(!report.had_errors(), "{report:?}");
    assert_eq!((r.connect.connected, r.held_at_end), (50, 50));
    assert_eq!(r.connect.connect_time.count, 50);
    assert!(r.server_memory.is_none());
    assert!(r.hold_secs >= 0.3);
}

#[test]
fn connections_at_a_rate_from_several_sources_weigh_the_server() {
    // The server runs in this process, so our own pid has its memory.
    let args = ConnectionsArgs {
        url: spawn(Behaviour::Echo),
        count: 20,
        pid: Some(std::process::id()),
        hold: 0.0,
        rate: Some(100.0),
        concurrency: 4,
        source_ips: 3,
        connect_timeout: 5.0,
        json: true,
    };
    let report = run_connections(&args).unwrap();
    let Report::Connections(r) = &report else { panic!() };
    assert!(!report.had_errors(), "{report:?}");
    assert_eq!(r.connect.connected, 20);
    // 20 connections at 100/s take about 0.19 s.
    assert!(r.connect.open_secs > 0.15, "{r:?}");
    let m = r.server_memory.as_ref().unwrap();
    assert!(m.rss_before_bytes > 0 && m.rss_after_bytes > 0);
}

#[test]
fn broadcast_all_to_all() {
    let args = broadcast_args(spawn(Behaviour::Broadcast), BroadcastMode::All);
    let report = run_broadcast(&args).unwrap();
    let Report::Broadcast(r) = &report else { panic!() };
    assert!(!report.had_errors(), "{report:?}");
    assert_eq!((r.senders, r.receivers_per_message), (6, 6));
    // 6 senders x 50/s x 1 s, give or take the edges of the window.
    assert!((240..=330).contains(&r.published), "{r:?}");
    assert_eq!(r.expected_deliveries, r.published * 6);
    assert_eq!(r.deliveries, r.expected_deliveries);
    assert_eq!(r.delivery_latency.count, r.deliveries);
    assert_eq!(r.last_delivery_latency.count, r.published);
    assert!(r.last_delivery_latency.p50_us >= r.delivery_latency.p50_us);
    assert_eq!(r.late_deliveries, 0);
}

#[test]
fn broadcast_fanout_from_one_publisher() {
    let mut args = broadcast_args(spawn(Behaviour::Broadcast), BroadcastMode::Fanout);
    args.rate = 200.0;
    args.duration = 0.5;
    args.size = 10; // smaller than the marker: the marker alone is sent
    let report = run_broadcast(&args).unwrap();
    let Report::Broadcast(r) = &report else { panic!() };
    assert!(!report.had_errors(), "{report:?}");
    assert_eq!((r.senders, r.receivers_per_message, r.connect.connected), (1, 6, 7));
    assert!(r.published >= 90, "{r:?}");
    assert_eq!(r.deliveries, r.published * 6);
}

#[test]
fn broadcast_counts_deliveries_that_never_come() {
    // The echo server sends each message back to its sender only: in `all`
    // mode with 3 clients, two of three deliveries of every message are lost.
    let mut args = broadcast_args(spawn(Behaviour::Echo), BroadcastMode::All);
    args.clients = 3;
    args.duration = 0.3;
    args.drain = 0.2;
    let report = run_broadcast(&args).unwrap();
    let Report::Broadcast(r) = &report else { panic!() };
    assert!(report.had_errors());
    assert!(r.published > 0);
    assert_eq!(r.errors.lost_messages, r.published * 2, "{r:?}");
    assert_eq!(r.deliveries, r.published);
    assert_eq!(r.last_delivery_latency.count, 0);
}
