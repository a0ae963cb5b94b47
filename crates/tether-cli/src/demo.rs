//! `tether demo ticker`: a stock-quote feed for the ticker page, in-process
//! (a full `tether serve` with the feed inside) or published to a running
//! server. Each quote is published with its symbol as the conflation key,
//! so a slow client keeps the latest price of every symbol, and a
//! `"delta":"merge-patch"` subscriber receives only the fields that moved.

use crate::serve;
use crate::settings::ServeArgs;
use anyhow::Context;
use std::process::ExitCode;
use std::time::Duration;
use tether::Message;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    #[command(subcommand)]
    pub demo: Demo,
}

#[derive(clap::Subcommand, Debug)]
pub enum Demo {
    /// Publish stock quotes: N symbols, R updates a second in all, keyed by
    /// symbol (conflated) on one topic. Without --url, runs `tether serve`
    /// (every serve flag applies) with the feed inside; open
    /// http://127.0.0.1:8080/ticker.html. With --url, publishes to a
    /// running server (start it with --message-rate 0, or stay under its
    /// rate limit).
    Ticker(Box<TickerArgs>),
}

#[derive(clap::Args, Debug)]
pub struct TickerArgs {
    /// Symbols to quote (1-10000)
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub symbols: u32,
    /// Quote updates per second, over all symbols
    #[arg(long, default_value_t = 50.0, value_parser = parse_rate)]
    pub rate: f64,
    /// The topic the quotes go to
    #[arg(long, default_value = "prices")]
    pub topic: String,
    /// Publish to this running server (a WebSocket URL, e.g.
    /// ws://127.0.0.1:8080/ticker) instead of starting one
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Stop after this many updates [default: until Ctrl-C]
    #[arg(long)]
    pub count: Option<u64>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 1_000_000.0 => Ok(r),
        _ => Err(format!("{s:?} is not a rate (updates per second, above 0 and at most 1000000)")),
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    match args.demo {
        Demo::Ticker(t) => ticker(*t),
    }
}

fn ticker(args: TickerArgs) -> anyhow::Result<ExitCode> {
    tether_hub::envelope::check_topic(&args.topic).map_err(|e| anyhow::anyhow!("--topic: {e}"))?;
    let feed = Feed::new(args.symbols as usize);
    let (rate, count, topic) = (args.rate, args.count, args.topic.clone());
    match args.url {
        None => {
            tracing::info!(symbols = args.symbols, rate, topic = %topic, "ticker: quotes published in-process; open /ticker.html");
            serve::run_with(
                args.serve,
                Some(Box::new(move |hub| {
                    tokio::spawn(pace(feed, rate, count, move |symbol, quote| {
                        if let Err(e) = hub.publish_json(&topic, Some(symbol), quote) {
                            tracing::warn!(error = %e, "ticker: a quote was not published");
                        }
                        true
                    }));
                })),
            )
        }
        Some(url) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(publish_remote(&url, feed, rate, count, topic))
        }
    }
}

/// Publish to a running server over one tether.v1 connection.
async fn publish_remote(url: &str, feed: Feed, rate: f64, count: Option<u64>, topic: String) -> anyhow::Result<ExitCode> {
    let (ws, _) = tether::ClientBuilder::new(url).protocol(tether_hub::PROTOCOL_V1).connect().await.with_context(|| format!("cannot connect to {url}"))?;
    if ws.protocol() != Some(tether_hub::PROTOCOL_V1) {
        anyhow::bail!("{url} does not speak tether.v1 (is it `tether serve`?)");
    }
    let (mut reader, mut writer) = ws.split();
    // Drain what the server sends (welcome, errors): report refusals.
    let drain = tokio::spawn(async move {
        let mut warned = false;
        while let Some(Ok(msg)) = reader.recv().await {
            if let Message::Text(t) = msg {
                if t.contains(r#""type":"error""#) && !warned {
                    warned = true;
                    tracing::warn!(error = %t.as_str(), "ticker: the server refused quotes (for a fast feed, run it with --message-rate 0)");
                }
            }
        }
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1024);
    let pacer = tokio::spawn(pace(feed, rate, count, move |symbol, quote| {
        let env = tether_hub::envelope::Request::Publish { topic: &topic, content: &serde_json::from_str(quote).unwrap_or_default(), key: Some(symbol) };
        tx.try_send(env.to_json(None)).is_ok() || !tx.is_closed()
    }));
    while let Some(text) = rx.recv().await {
        writer.send(text).await.with_context(|| format!("connection to {url} lost"))?;
    }
    let _ = writer.close(tether::CloseCode::NORMAL, "done").await;
    pacer.abort();
    drain.abort();
    Ok(ExitCode::SUCCESS)
}

/// Emit `rate` quotes a second (in steps of 10 ms) through `send` until
/// `count` (or forever); `send` returns false to stop.
async fn pace(mut feed: Feed, rate: f64, count: Option<u64>, mut send: impl FnMut(&str, &str) -> bool) {
    let start = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut sent, mut reported) = (0u64, start);
    loop {
        ticker.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(count.unwrap_or(u64::MAX));
        while sent < due {
            let (symbol, quote) = feed.next_quote();
            if !send(&symbol, &quote) {
                return;
            }
            sent += 1;
        }
        if reported.elapsed() >= Duration::from_secs(10) {
            reported = tokio::time::Instant::now();
            tracing::info!(sent, per_second = (sent as f64 / start.elapsed().as_secs_f64()).round(), "ticker");
        }
        if Some(sent) == count {
            tracing::info!(sent, "ticker: done");
            return;
        }
    }
}

/// Made-up listings: symbol and name.
const LISTINGS: &[(&str, &str)] = &[
    ("TTR", "Tether Industries"),
    ("ACME", "Acme Corporation"),
    ("INIT", "Initech"),
    ("GLOBX", "Globex Corporation"),
    ("UMBR", "Umbrella Holdings"),
    ("HOOLI", "Hooli"),
    ("STARK", "Stark Industries"),
    ("WAYNE", "Wayne Enterprises"),
    ("CYBD", "Cyberdyne Systems"),
    ("SOYL", "Soylent Foods"),
    ("VAND", "Vandelay Industries"),
    ("OSCP", "Oscorp"),
    ("WONKA", "Wonka Confectionery"),
    ("MASSV", "Massive Dynamic"),
    ("TYRL", "Tyrell Corporation"),
    ("PIED", "Pied Piper"),
    ("DUFF", "Duff Beverages"),
    ("NAKA", "Nakatomi Trading"),
    ("BLUTH", "Bluth Company"),
    ("PLNX", "Planet Express"),
];

struct Quote {
    symbol: String,
    name: String,
    open: f64,
    price: f64,
    volume: u64,
}

/// Random-walk quotes (xorshift: a demo needs no cryptographic randomness).
struct Feed {
    quotes: Vec<Quote>,
    state: u64,
}

impl Feed {
    fn new(symbols: usize) -> Feed {
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ std::process::id() as u64;
        let quotes = (0..symbols)
            .map(|i| {
                let (symbol, name) = match LISTINGS.get(i) {
                    Some((s, n)) => (s.to_string(), n.to_string()),
                    None => (format!("S{i:04}"), format!("Listing {i}")),
                };
                state = xorshift(state);
                let open = 20.0 + (state % 50_000) as f64 / 100.0;
                Quote { symbol, name, open, price: open, volume: 0 }
            })
            .collect();
        Feed { quotes, state }
    }

    /// The next update: a random symbol moves; `(symbol, quote JSON)`.
    fn next_quote(&mut self) -> (String, String) {
        self.state = xorshift(self.state);
        let r = self.state;
        let n = self.quotes.len() as u64;
        let q = &mut self.quotes[(r % n) as usize];
        let step = ((r >> 16) % 2001) as f64 / 1000.0 - 1.0; // -1.0 ..= 1.0
        q.price = (q.price * (1.0 + step * 0.002)).max(0.01);
        q.volume += 100 * (1 + (r >> 40) % 50);
        let price = (q.price * 100.0).round() / 100.0;
        let change = ((price - q.open) * 100.0).round() / 100.0;
        let quote = serde_json::json!({
            "symbol": q.symbol,
            "name": q.name,
            "price": price,
            "change": change,
            "change_pct": ((change / q.open) * 10_000.0).round() / 100.0,
            "bid": ((price - 0.01) * 100.0).round() / 100.0,
            "ask": ((price + 0.01) * 100.0).round() / 100.0,
            "volume": q.volume,
        });
        (q.symbol.clone(), quote.to_string())
    }
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_move_and_stay_valid() {
        let mut feed = Feed::new(25);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let (symbol, quote) = feed.next_quote();
            let v: serde_json::Value = serde_json::from_str(&quote).unwrap();
            assert_eq!(v["symbol"], symbol.as_str());
            assert!(v["price"].as_f64().unwrap() > 0.0);
            assert!(v["ask"].as_f64() > v["bid"].as_f64());
            seen.insert(symbol);
        }
        assert_eq!(seen.len(), 25, "every symbol gets updates");
        assert!(seen.contains("S0024") && seen.contains("TTR"));
    }
}
