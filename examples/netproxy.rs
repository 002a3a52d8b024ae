//! A TCP proxy that puts a network model between a client and a server on loopback, for
//! `scripts/bench-net.sh` (issue 17): wsfs and the eager baseline reach the same HTTP object
//! store through it, so both pay for the network the way a CI machine fetching from a bucket does.
//!
//! ```sh
//! cargo run --release --example netproxy -- --listen 127.0.0.1:0 --upstream 127.0.0.1:PORT \
//!     --delay-ms 10 --conn-mbps 100 --total-mbps 125 [--port-file F] [--stats-file F]
//! ```
//!
//! It prints the address it bound (`127.0.0.1:PORT`, one line on stdout; also written to
//! `--port-file`) and forwards every accepted connection to `--upstream`. MB/s are 10^6 bytes/s.
//!
//! # The model
//!
//! * **Latency.** Every byte is delivered `delay` after the proxy read it, in each direction:
//!   each direction is a timestamped queue (a reader task stamps each segment when it has passed
//!   the bandwidth limits, a writer task writes it out at stamp + delay). A stream is pipelined
//!   (a 100 MB body costs its transfer time plus one delay, not one delay per segment), and a
//!   request/response costs one round trip, 2 × delay.
//! * **Handshake.** A new connection forwards nothing for 2 × delay after it was accepted (the
//!   TCP handshake's round trip; the client's first bytes wait in the socket buffer), so the first
//!   request on a new connection costs 2 round trips. No TLS round trips are modelled.
//! * **Bandwidth.** A token bucket per connection and direction (`--conn-mbps`) and one bucket
//!   shared by all connections per direction (`--total-mbps`: the machine's NIC, full duplex, so
//!   downloads and uploads each have their own). A segment passes when both buckets have its
//!   bytes; buckets go into debt and the reader sleeps the debt off, so concurrent connections
//!   share the total in turn (≈ FIFO), and a bucket's burst is small (2 ms of its rate, at least
//!   256 KiB) — the rate holds over any window longer than a few milliseconds. The reader sleeps
//!   before it reads more, so the proxy holds only about rate × delay bytes per direction (the
//!   bandwidth-delay product) and the sender feels back-pressure as from a real link.
//! * **Not modelled:** TCP slow start and windows (a connection gets its full rate at once),
//!   loss, jitter, per-request server time of a real object store (the backend answers in
//!   microseconds), DNS, TLS. So the model is a lower bound on what a real bucket costs.
//! * **Timer precision.** Deliveries and bandwidth sleeps wait on one timer thread (a condition
//!   variable with a nanosecond timeout), not tokio's 1 ms timer wheel, which rounds every
//!   deadline up and made a 1 ms one-way delay ≈ 1.5 ms. A writer woken for a segment also writes
//!   the segments due within [`BATCH`] after it. Measured (self-check below, 2-core VM): round
//!   trips of 20.5–20.7 ms at 10 ms and 2.3–2.5 ms at 1 ms one way (the proxy's own wake-ups add
//!   ≈ 0.1–0.2 ms per direction); one 100 MB download at 100 MB/s per connection 1.04 s, two at
//!   once with 125 MB/s in total 1.65 s each (61 MB/s). The proxy costs ≈ 1 CPU-second per GB
//!   forwarded: at 1,000 MB/s on 2 cores shared with the client and server it delivered 600–770
//!   MB/s on one connection, ≈ 900 MB/s on two, so the `lan` rates are not reached here.
//!
//! Half-close is forwarded (when one side ends its writes, the proxy shuts down the other side's
//! write half once the earlier bytes are delivered); an error on either side closes both.
//!
//! # Counters
//!
//! `--stats-file F`: on SIGUSR1, and at exit (SIGTERM, SIGINT), the proxy writes one JSON line
//! `{"seq":N,"connections":N,"active":N,"bytes_down":N,"bytes_up":N}` to F (atomically, with a
//! rename); `down` is upstream → client, `up` is client → upstream, payload bytes only. Without
//! the flag the line goes to stderr.
//!
//! # Self-check (by hand)
//!
//! ```sh
//! # any HTTP server on 8099 (the measurements above used nginx with sendfile)
//! head -c 100000000 /dev/urandom > /tmp/np/f.bin; (cd /tmp/np && python3 -m http.server 8099 &)
//! netproxy --listen 127.0.0.1:9000 --upstream 127.0.0.1:8099 --delay-ms 10 --conn-mbps 100 --total-mbps 125 &
//! curl -o /dev/null -w '%{time_total}\n' http://127.0.0.1:9000/f.bin      # ≈ 1.0 s + 4 × 10 ms
//! # two at once: each ≈ 62 MB/s (total 125), i.e. ≈ 1.6 s each
//! ```
//! `cargo test --release --example netproxy` checks the token-bucket arithmetic.

use bytes::{Bytes, BytesMut};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// The most one read takes from a socket (one segment of the delay queue).
const SEGMENT: usize = 256 * 1024;
/// Segments queued per direction before the reader waits (the delay line holds rate × delay,
/// ≈ 4 full segments at 100 MB/s and 10 ms; small segments are many more).
const QUEUE: usize = 4096;
/// A reader skips sleeping off a bucket debt shorter than this (the debt stays and is slept off
/// with a later segment): a wake-up per segment would only cost CPU. So a stream may run up to
/// this far ahead of its rate, never more.
const MIN_SLEEP: Duration = Duration::from_millis(1);
/// A writer woken for one segment also writes the queued segments due within this much after it.
const BATCH: Duration = Duration::from_micros(500);

/// Precise wake-ups for the delay queues. tokio's timers have 1 ms granularity and round up
/// (plus epoll's whole-millisecond timeout), which turned a 1 ms one-way delay into ≈ 1.5 ms.
/// One thread keeps the deadlines of every writer in a heap and sleeps on a condition variable
/// (a futex with a nanosecond timeout), waking each writer through a oneshot at its deadline.
struct Timer {
    state: Mutex<BinaryHeap<Reverse<Wake>>>,
    cv: Condvar,
}

struct Wake {
    at: std::time::Instant,
    seq: u64,
    tx: oneshot::Sender<()>,
}

impl PartialEq for Wake {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Wake {}
impl PartialOrd for Wake {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Wake {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

static TIMER: OnceLock<Arc<Timer>> = OnceLock::new();
static TIMER_SEQ: AtomicU64 = AtomicU64::new(0);

fn timer() -> &'static Arc<Timer> {
    TIMER.get_or_init(|| {
        let t = Arc::new(Timer {
            state: Mutex::new(BinaryHeap::new()),
            cv: Condvar::new(),
        });
        let t2 = t.clone();
        std::thread::Builder::new()
            .name("netproxy-timer".into())
            .spawn(move || {
                let mut heap = t2.state.lock().unwrap();
                loop {
                    let now = std::time::Instant::now();
                    while heap.peek().is_some_and(|w| w.0.at <= now) {
                        let _ = heap.pop().unwrap().0.tx.send(());
                    }
                    heap = match heap.peek().map(|w| w.0.at) {
                        Some(at) => t2.cv.wait_timeout(heap, at - now).unwrap().0,
                        None => t2.cv.wait(heap).unwrap(),
                    };
                }
            })
            .expect("timer thread");
        t
    })
}

/// Sleeps until `at`, to within ≈ 0.1 ms.
async fn sleep_until(at: Instant) {
    let at = at.into_std();
    if at <= std::time::Instant::now() {
        return;
    }
    let (tx, rx) = oneshot::channel();
    let t = timer();
    {
        let mut heap = t.state.lock().unwrap();
        let earliest = heap.peek().is_none_or(|w| at < w.0.at);
        heap.push(Reverse(Wake {
            at,
            seq: TIMER_SEQ.fetch_add(1, Ordering::Relaxed),
            tx,
        }));
        if earliest {
            t.cv.notify_one();
        }
    }
    let _ = rx.await;
}

/// A token bucket that may go into debt: [`Bucket::reserve`] takes `n` bytes now and returns how
/// long the caller must wait before they are sent. Concurrent callers are served in the order
/// they reserve, each after the bytes reserved before it (a virtual-clock link).
#[derive(Debug)]
struct Bucket {
    /// Bytes per second.
    rate: f64,
    /// Most tokens that accumulate while idle (the burst).
    cap: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate_bytes_per_s: f64, now: Instant) -> Bucket {
        let cap = (rate_bytes_per_s * 0.002).max(256.0 * 1024.0);
        Bucket {
            rate: rate_bytes_per_s,
            cap,
            tokens: cap,
            last: now,
        }
    }

    /// Takes `n` bytes at `now`; returns the wait until they have passed.
    fn reserve(&mut self, n: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.cap);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// A bucket shared by the connections (the NIC).
type Shared = Arc<Mutex<Bucket>>;

#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    active: AtomicU64,
    bytes_down: AtomicU64,
    bytes_up: AtomicU64,
    seq: AtomicU64,
}

impl Stats {
    fn json(&self) -> String {
        format!(
            "{{\"seq\":{},\"connections\":{},\"active\":{},\"bytes_down\":{},\"bytes_up\":{}}}",
            self.seq.fetch_add(1, Ordering::SeqCst) + 1,
            self.connections.load(Ordering::SeqCst),
            self.active.load(Ordering::SeqCst),
            self.bytes_down.load(Ordering::SeqCst),
            self.bytes_up.load(Ordering::SeqCst),
        )
    }
}

#[derive(Clone)]
struct Model {
    delay: Duration,
    /// Per-connection rate, bytes/s (each direction); `None`: unlimited.
    conn_rate: Option<f64>,
    /// The shared buckets: download (upstream → client) and upload.
    total_down: Option<Shared>,
    total_up: Option<Shared>,
}

/// One segment of a direction's delay queue: bytes (or the end of the stream) and when they
/// may be written.
struct Segment {
    due: Instant,
    data: Option<Bytes>,
}

fn write_stats(stats: &Stats, file: &Option<PathBuf>) {
    let line = stats.json();
    match file {
        Some(f) => {
            let tmp = f.with_extension("tmp");
            if let Err(e) =
                std::fs::write(&tmp, format!("{line}\n")).and_then(|_| std::fs::rename(&tmp, f))
            {
                eprintln!("netproxy: cannot write {}: {e}", f.display());
            }
        }
        None => eprintln!("{line}"),
    }
}

/// Reads `src` segment by segment, passes each through the buckets and queues it, stamped with
/// its delivery time. The end of the stream is queued too.
async fn read_side(
    mut src: OwnedReadHalf,
    tx: mpsc::Sender<Segment>,
    conn: Option<Bucket>,
    total: Option<Shared>,
    delay: Duration,
    counter: &AtomicU64,
) -> std::io::Result<()> {
    let mut conn = conn;
    let mut buf = BytesMut::with_capacity(SEGMENT);
    loop {
        buf.reserve(SEGMENT);
        let n = src.read_buf(&mut buf).await?;
        let now = Instant::now();
        if n == 0 {
            let _ = tx
                .send(Segment {
                    due: now + delay,
                    data: None,
                })
                .await;
            return Ok(());
        }
        let mut wait = conn.as_mut().map_or(Duration::ZERO, |b| b.reserve(n, now));
        if let Some(t) = &total {
            wait = wait.max(t.lock().unwrap().reserve(n, now));
        }
        if wait >= MIN_SLEEP {
            sleep_until(now + wait).await;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        let seg = Segment {
            due: now + wait + delay,
            data: Some(buf.split().freeze()),
        };
        if tx.send(seg).await.is_err() {
            // The writer failed; its error ends the connection.
            return Ok(());
        }
    }
}

/// Writes the queued segments to `dst`, each at its due time; shuts down `dst`'s write half at
/// the end of the stream.
async fn write_side(
    mut dst: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Segment>,
) -> std::io::Result<()> {
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(s) => Some(s),
            None => rx.recv().await,
        };
        let Some(first) = first else {
            // The reader stopped without an end of stream: it failed, and its error ends the
            // connection.
            return Err(std::io::Error::other("reader ended"));
        };
        // The first segment of a wake-up is written at its due time exactly; the ones queued
        // behind it that are due within BATCH go out with it (one wake-up per batch, not per
        // segment: at 1,000 MB/s wake-ups, not copies, were the limit).
        sleep_until(first.due).await;
        let mut seg = first;
        loop {
            match seg.data {
                Some(d) => dst.write_all(&d).await?,
                None => {
                    dst.shutdown().await?;
                    return Ok(());
                }
            }
            match rx.try_recv() {
                Ok(s) if s.due <= Instant::now() + BATCH => seg = s,
                Ok(s) => {
                    next = Some(s);
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

async fn direction(
    src: OwnedReadHalf,
    dst: OwnedWriteHalf,
    model: &Model,
    total: Option<Shared>,
    counter: &AtomicU64,
) -> std::io::Result<()> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let conn = model.conn_rate.map(|r| Bucket::new(r, Instant::now()));
    let reader = read_side(src, tx, conn, total, model.delay, counter);
    let writer = write_side(dst, rx);
    // A reader error ends the direction at once; a writer error too (the reader's pending
    // read is dropped).
    tokio::try_join!(reader, writer).map(|_| ())
}

async fn handle(client: TcpStream, upstream: SocketAddr, model: Model, stats: Arc<Stats>) {
    let accepted = Instant::now();
    let server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("netproxy: cannot connect to {upstream}: {e}");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // The handshake: one round trip before the first byte moves.
    sleep_until(accepted + 2 * model.delay).await;
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = direction(cr, sw, &model, model.total_up.clone(), &stats.bytes_up);
    let down = direction(sr, cw, &model, model.total_down.clone(), &stats.bytes_down);
    // The first error drops both directions, and with them both sockets (closing both sides).
    let _ = tokio::try_join!(up, down);
}

struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    delay: Duration,
    conn_mbps: Option<f64>,
    total_mbps: Option<f64>,
    port_file: Option<PathBuf>,
    stats_file: Option<PathBuf>,
}

fn usage(msg: &str) -> ! {
    eprintln!("netproxy: {msg}");
    eprintln!(
        "usage: netproxy --upstream HOST:PORT [--listen 127.0.0.1:0] [--delay-ms 10] [--conn-mbps 100] \
         [--total-mbps 125] [--port-file F] [--stats-file F]   (rates in 10^6 bytes/s; 0 = unlimited)"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: "0.0.0.0:0".parse().unwrap(),
        delay: Duration::ZERO,
        conn_mbps: None,
        total_mbps: None,
        port_file: None,
        stats_file: None,
    };
    let mut have_upstream = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        let num = |v: String| -> f64 {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .unwrap_or_else(|| usage(&format!("{flag}: not a number: {v}")))
        };
        let rate = |x: f64| (x > 0.0).then_some(x);
        match flag.as_str() {
            "--listen" => {
                a.listen = val()
                    .parse()
                    .unwrap_or_else(|_| usage("--listen: not IP:PORT"))
            }
            "--upstream" => {
                a.upstream = val()
                    .parse()
                    .unwrap_or_else(|_| usage("--upstream: not IP:PORT"));
                have_upstream = true;
            }
            "--delay-ms" => a.delay = Duration::from_secs_f64(num(val()) / 1e3),
            "--conn-mbps" => a.conn_mbps = rate(num(val())),
            "--total-mbps" => a.total_mbps = rate(num(val())),
            "--port-file" => a.port_file = Some(val().into()),
            "--stats-file" => a.stats_file = Some(val().into()),
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if !have_upstream {
        usage("--upstream is required");
    }
    a
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let listener = TcpListener::bind(args.listen)
        .await
        .unwrap_or_else(|e| usage(&format!("cannot listen on {}: {e}", args.listen)));
    let addr = listener.local_addr().expect("local address");
    println!("{addr}");
    if let Some(f) = &args.port_file {
        let tmp = f.with_extension("tmp");
        std::fs::write(&tmp, format!("{addr}\n"))
            .and_then(|_| std::fs::rename(&tmp, f))
            .unwrap_or_else(|e| usage(&format!("cannot write {}: {e}", f.display())));
    }
    let now = Instant::now();
    let shared = |mbps: Option<f64>| mbps.map(|m| Arc::new(Mutex::new(Bucket::new(m * 1e6, now))));
    let model = Model {
        delay: args.delay,
        conn_rate: args.conn_mbps.map(|m| m * 1e6),
        total_down: shared(args.total_mbps),
        total_up: shared(args.total_mbps),
    };
    eprintln!(
        "netproxy: {addr} -> {}: delay {:?} each way, {} MB/s per connection, {} MB/s in total",
        args.upstream,
        model.delay,
        args.conn_mbps.map_or("unlimited".into(), |m| m.to_string()),
        args.total_mbps
            .map_or("unlimited".into(), |m| m.to_string()),
    );
    let stats = Arc::new(Stats::default());
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (stats, file) = (stats.clone(), args.stats_file.clone());
        let mut usr1 = signal(SignalKind::user_defined1()).expect("SIGUSR1 handler");
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = usr1.recv() => write_stats(&stats, &file),
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                }
            }
            write_stats(&stats, &file);
            std::process::exit(0);
        });
    }
    loop {
        let (client, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: wait a little instead of spinning.
                eprintln!("netproxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        stats.connections.fetch_add(1, Ordering::SeqCst);
        stats.active.fetch_add(1, Ordering::SeqCst);
        let (model, stats) = (model.clone(), stats.clone());
        tokio::spawn(async move {
            handle(client, args.upstream, model, stats.clone()).await;
            stats.active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: f64 = 1e6;

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    #[test]
    fn a_full_bucket_passes_its_burst_then_paces_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100.0 * MB, t0);
        // 2 ms of 100 MB/s = 200 KB, below the 256 KiB floor: the burst is 256 KiB.
        assert_eq!(b.reserve(256 * 1024, t0), Duration::ZERO);
        // Then 1 MB takes 10 ms.
        assert!((ms(b.reserve(1_000_000, t0)) - 10.0).abs() < 1e-6);
        // 100 MB reserved back to back at the same instant: the last waits ≈ 1 s more.
        let mut last = Duration::ZERO;
        for _ in 0..100 {
            last = b.reserve(1_000_000, t0);
        }
        assert!((ms(last) - 1010.0).abs() < 1e-3, "{last:?}");
    }

    #[test]
    fn time_pays_the_debt_and_idle_time_refills_only_up_to_the_cap() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100.0 * MB, t0);
        let burst = b.cap as usize;
        b.reserve(burst, t0);
        let w = b.reserve(1_000_000, t0);
        assert!((ms(w) - 10.0).abs() < 1e-6);
        // Sleeping the debt off leaves nothing owed: the next 64 KiB waits its own 0.655 ms.
        let t1 = t0 + w;
        assert!((ms(b.reserve(65_536, t1)) - 0.65536).abs() < 1e-6);
        // A long idle time refills the burst and no more.
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(b.reserve(burst, t2), Duration::ZERO);
        assert!(b.reserve(1, t2) > Duration::ZERO);
    }

    #[test]
    fn a_shared_bucket_serves_concurrent_readers_in_turn() {
        // Two connections of 100 MB/s through a 125 MB/s total, each reserving full segments
        // as soon as its previous one has passed: each gets ≈ 62.5 MB/s.
        let t0 = Instant::now();
        let total = Mutex::new(Bucket::new(125.0 * MB, t0));
        let mut conns = [Bucket::new(100.0 * MB, t0), Bucket::new(100.0 * MB, t0)];
        let mut next = [t0, t0];
        let mut sent = [0usize; 2];
        let end = t0 + Duration::from_secs(2);
        loop {
            let i = if next[0] <= next[1] { 0 } else { 1 };
            let now = next[i];
            if now >= end {
                break;
            }
            let w = conns[i]
                .reserve(SEGMENT, now)
                .max(total.lock().unwrap().reserve(SEGMENT, now));
            next[i] = now + w;
            sent[i] += SEGMENT;
        }
        for s in sent {
            let rate = s as f64 / 2.0 / MB;
            assert!((rate - 62.5).abs() < 1.5, "{rate} MB/s");
        }
    }

    #[test]
    fn one_connection_is_held_to_its_own_rate_under_a_larger_total() {
        let t0 = Instant::now();
        let mut total = Bucket::new(1250.0 * MB, t0);
        let mut conn = Bucket::new(1000.0 * MB, t0);
        let mut now = t0;
        let mut sent = 0usize;
        while now < t0 + Duration::from_secs(1) {
            now += conn.reserve(SEGMENT, now).max(total.reserve(SEGMENT, now));
            sent += SEGMENT;
        }
        let rate = sent as f64 / MB;
        assert!((rate - 1000.0).abs() < 5.0, "{rate} MB/s");
    }
}
