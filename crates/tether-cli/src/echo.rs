//! `tether echo`: an echo server on the lean accept path.

use crate::shutdown;
use anyhow::Context;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::task::{ready, Poll};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tether::{Accept, CloseCode, Config, Message};
use tether_hub::Ending;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(clap::Args, Debug)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001", env = "TETHER_LISTEN")]
    listen: SocketAddr,
    /// Largest message accepted (e.g. 1MiB, 65536); larger ones close with 1009.
    #[arg(long, default_value = "64MiB", value_name = "SIZE", value_parser = crate::settings::parse_size)]
    max_message_size: usize,
    #[command(flatten)]
    driver: crate::driver::DriverArgs,
    #[command(flatten)]
    deflate: crate::settings::DeflateArgs,
}

pub fn run(args: EchoArgs) -> anyhow::Result<ExitCode> {
    let threads = args.driver.threads();
    if args.driver.driver == crate::driver::DriverKind::Loop {
        // Accept and handshakes on one tokio thread; the connections on the loops.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let driver = crate::driver::Driver::start(Arc::new(EchoService), threads, tether::Config::default().write_buffer_high_water)?;
        return runtime.block_on(serve(args, Some(Arc::new(driver))));
    }
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    };
    runtime.block_on(serve(args, None))
}

type Loops = Arc<crate::driver::Driver<EchoService>>;

async fn serve(args: EchoArgs, loops: Option<Loops>) -> anyhow::Result<ExitCode> {
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("listening on ws://{addr}");
    tracing::info!(%addr, "echo server ready");
    let config = Arc::new(Config {
        max_message_size: args.max_message_size,
        max_frame_size: args.max_message_size,
        deflate: args.deflate.config(),
        ..Config::default()
    });
    if let Some(d) = &config.deflate {
        tracing::info!(threshold = d.threshold, context_takeover = d.context_takeover, window_bits = d.max_window_bits, "permessage-deflate on");
    }
    let (stop_tx, stop_rx) = shutdown::channel();
    let live = Arc::new(AtomicUsize::new(0));
    let signal = shutdown::signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    let config = config.clone();
                    let stop = stop_rx.clone();
                    let live = live.clone();
                    live.fetch_add(1, Ordering::Relaxed);
                    let loops = loops.clone();
                    let task = async move {
                        match loops {
                            Some(loops) => handshake_then_loop(tcp, &config, &loops).await,
                            None => connection(tcp, &config, stop).await,
                        }
                        live.fetch_sub(1, Ordering::Relaxed);
                    };
                    tracing::trace!(bytes = std::mem::size_of_val(&task), "connection task size");
                    tokio::spawn(task);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut signal => break,
        }
    }
    drop(listener);
    let open = live.load(Ordering::Relaxed) + loops.as_ref().map_or(0, |l| l.live());
    tracing::info!(open, "shutting down: closing connections with 1001");
    let _ = stop_tx.send(true);
    if let Some(loops) = &loops {
        loops.shutdown();
    }
    let open = || live.load(Ordering::Relaxed) + loops.as_ref().map_or(0, |l| l.live());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = open();
    if left > 0 {
        tracing::warn!(left, "connections did not close in time");
    }
    Ok(ExitCode::SUCCESS)
}

/// A plain `fn` returning `async move`: `async fn` arguments are stored twice
/// in the future (rust-lang/rust#62958), and this future is the memory of an
/// idle connection.
fn connection(tcp: TcpStream, config: &Config, mut stop: watch::Receiver<bool>) -> impl std::future::Future<Output = ()> + '_ {
    async move {
    let _ = tcp.set_nodelay(true);
    // Boxed so the handshake's state is freed once it is done, instead of
    // sizing this task for the connection's whole life.
    let mut ws = match Box::pin(tether::accept_with(tcp, config, |_| Ok(Accept::default()))).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(error = %e, "handshake failed");
            return;
        }
    };
    let stopped = {
        let mut stop_signal = std::pin::pin!(stop.changed());
        poll_fn(|cx| loop {
            if stop_signal.as_mut().poll(cx).is_ready() {
                return Poll::Ready(true);
            }
            // Backpressure: stop reading while the peer is not reading our echoes.
            if ws.pending_len() >= ws.high_water() {
                match ws.poll_write_pending(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(false),
                    Poll::Pending => return Poll::Pending,
                }
            }
            // Echoes are queued; they are flushed when the reader next waits,
            // so pipelined messages go out in one write.
            match ready!(ws.poll_recv(cx)) {
                Some(Ok(msg @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.start_send(msg).is_err() {
                        return Poll::Ready(false);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "connection ended with an error");
                    return Poll::Ready(false);
                }
                None => return Poll::Ready(false),
            }
        })
        .await
    };
    if stopped {
        let _ = Box::pin(tokio::time::timeout(Duration::from_secs(3), ws.close(CloseCode::GOING_AWAY, "server shutting down"))).await;
    }
    }
}

/// The handshake on tokio, then the connection on an event loop.
async fn handshake_then_loop(tcp: TcpStream, config: &Config, loops: &Loops) {
    let _ = tcp.set_nodelay(true);
    let ws = match Box::pin(tether::accept_with(tcp, config, |_| Ok(Accept::default()))).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(error = %e, "handshake failed");
            return;
        }
    };
    let (tcp, conn) = ws.into_parts();
    match tcp.into_std() {
        Ok(tcp) => loops.adopt(tcp, conn, ()),
        Err(e) => tracing::debug!(error = %e, "cannot hand the connection to the event loop"),
    }
}

/// Echo on the event loop: every text or binary message goes back as it came.
pub(crate) struct EchoService;

impl crate::driver::Service for EchoService {
    type Init = ();
    type State = ();

    fn open(&self, (): (), _: &mut tether_proto::Connection) {}

    fn on_message(&self, _: &mut (), conn: &mut tether_proto::Connection, msg: Message) -> Result<(), Ending> {
        if msg.is_data() {
            // Fails only once closing began: then there is nobody to echo to.
            let _ = conn.send(msg);
        }
        Ok(())
    }

    fn on_closed(&self, _: &mut ()) -> Ending {
        Ending::Finish { within: Duration::from_secs(2) }
    }

    fn on_shutdown(&self, _: &mut ()) -> Option<Ending> {
        Some(Ending::Close { code: CloseCode::GOING_AWAY.0, reason: "server shutting down", within: Duration::from_secs(3) })
    }
}
