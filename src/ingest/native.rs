//! The native HTTP/1.1 connection engine (the default): readiness first, then a read into the
//! worker's scratch buffer, requests framed by [`super::h1`] and answered from
//! [`super::routes`]. An idle connection owns no read or write buffer: only the bytes of an
//! unfinished request are copied into a buffer of their own size, freed when the request is
//! done, and only an answer the socket would not take at once is kept.
//!
//! One task per connection on the worker's `LocalSet`, with one lazily re-armed timer (idle,
//! header or body deadline, whichever applies).

use super::answer::{Answer, Cors, Reject};
use super::commit::Ticket;
use super::conn::{identify, Conn};
use super::h1::{self, After, AnswerTo, Chunked, Framing, ParsedHead};
use super::record_build::{self, Built};
use super::request::{split_target, Head, Route};
use super::routes::{self, Next};
use super::sock::{flush, send, write_all, End};
use super::state::SharedState;
use super::stats::Counter;
use super::tls_conn::TlsIo;
use super::worker_state::Worker;
use super::Phase;
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;
use tokio::net::TcpStream;
use tokio::time::Instant as TokioInstant;

/// Headers kept on the stack per parse (a config asking for more gets a heap array).
const STACK_HEADERS: usize = 128;

/// What the bytes of one read turned into.
enum Step {
    /// Everything answered; wait for more bytes (a partial request may be pending).
    More,
    /// Answer written (or queued); close the connection.
    Close,
    /// A record went into the worker's commit group: answer after it is durable.
    Commit(Committed),
}

struct Committed {
    ticket: Ticket,
    route: Route,
    built: Built,
    cors: Option<Cors>,
    to: AnswerTo,
    close: bool,
    started: Instant,
}

/// Per-connection state beyond the socket: all empty while the connection is idle.
struct State {
    /// Bytes of an unfinished request (or of requests read behind one being committed).
    pending: Vec<u8>,
    /// Answer bytes the socket did not take yet.
    unsent: Vec<u8>,
    /// When the unfinished request must be complete (header or body deadline).
    deadline: Option<TokioInstant>,
    /// The pending head was checked and charged to the rate limiter already.
    head_charged: bool,
    /// `100 Continue` was sent for the pending request.
    continued: bool,
    /// The pending request's head is complete (its deadline is the body deadline).
    head_done: bool,
    /// Past `http.max_connection_age_seconds`: the next answer closes the connection.
    aged: bool,
    /// When it reaches that age ([`Worker::connection_expiry`]).
    expires: u32,
}

/// A connection's whole task: the PROXY header when the listener expects one, then requests
/// until the connection closes, a deadline passes or the phase says so. One flat future
/// (no nested one holding copies of the socket and the peer), so an idle connection holds as
/// little as possible.
///
/// Longer than the house limit of ~120 lines on purpose: this is the future every idle
/// browser connection is, and its size is the memory per idle connection. Helpers that await
/// would each add their own state to it; the non-awaiting work is already in [`process`].
pub(crate) async fn run(
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
    w: Rc<Worker>,
    // Boxed, and made by the caller: a plain connection's future carries one pointer for it.
    mut tls: Option<Box<TlsIo>>,
) {
    let mode = w.app().proxy;
    let Some(conn) = identify(mode, &mut stream, peer, w.header_timeout).await else {
        return;
    };
    w.open.increment(1.0);
    let _open = Open(&w);
    // Held for the connection's life: returned when the connection is closed.
    let permit = permit;
    let phase = w.phase_slot();
    let mut st = State::new(w.connection_expiry());
    if tls.is_some() {
        // The handshake must complete within the header deadline (a slow one is cut).
        st.deadline = Some(TokioInstant::now() + w.header_timeout);
    }
    let mut last_active = TokioInstant::now();
    let timer = tokio::time::sleep_until(last_active + w.idle_timeout);
    tokio::pin!(timer);
    let mut process_pending = false;
    loop {
        let ph = w.phase_now.get();
        if ph == Phase::Abort || (ph >= Phase::Draining && st.pending.is_empty()) {
            break;
        }
        if !process_pending {
            let want = st.deadline.unwrap_or_else(|| idle_until(&w, last_active));
            if want < timer.deadline() {
                timer.as_mut().reset(want);
            }
            // Readiness, deadline or phase, polled in place: no future per wait (a
            // `select!` over `readable()` held ~100 bytes more per idle connection).
            let wake = std::future::poll_fn(|cx| {
                if w.phase_now.get() != ph {
                    return Poll::Ready(Wake::Phase);
                }
                match stream.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => return Poll::Ready(Wake::Readable),
                    Poll::Ready(Err(_)) => return Poll::Ready(Wake::Error),
                    Poll::Pending => {}
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Timer);
                }
                phase.register(cx);
                Poll::Pending
            })
            .await;
            match wake {
                Wake::Readable => {}
                Wake::Phase => continue,
                Wake::Error => break,
                Wake::Timer => {
                    let want = st.deadline.unwrap_or_else(|| idle_until(&w, last_active));
                    if TokioInstant::now() < want {
                        // Activity moved the deadline: re-arm, no wake-up per request.
                        timer.as_mut().reset(want);
                        continue;
                    }
                    if tls.as_ref().is_some_and(|t| !t.established()) {
                        crate::tls::Handshake::Timeout.count();
                    } else if st.deadline.is_some() && st.head_done {
                        // The body did not arrive in time: 408, like the hyper engine.
                        Box::pin(answer_and_close(&stream, &mut tls, &w, Reject::BodyTimeout))
                            .await;
                    } else if st.deadline.is_some() {
                        // Slowloris: the head did not complete in time. Closed without an
                        // answer, like the hyper engine.
                        w.stats.add(Counter::HeaderTimeouts, 1);
                    }
                    break;
                }
            }
        }
        if w.expiry_instant(st.expires)
            .is_some_and(|e| TokioInstant::now() >= e)
        {
            st.aged = true;
        }
        let step = match read_and_process(&stream, &mut tls, &conn, &w, &mut st, process_pending) {
            Ok(Some(step)) => step,
            // Spurious readiness, or a TLS step with nothing for HTTP (a handshake message
            // whose answer may wait in `unsent`): the flush below, then wait. (Not an await
            // of its own here: every await site adds to an idle connection's future.)
            Ok(None) => Step::More,
            Err(End::Eof) if st.head_done => {
                // The client stopped sending in the middle of a body it announced: 400, as
                // the hyper engine answers a body that ends early.
                Box::pin(answer_and_close(&stream, &mut tls, &w, Reject::BodyError)).await;
                break;
            }
            Err(_) => break,
        };
        process_pending = false;
        last_active = TokioInstant::now();
        // Earlier answers of this read go out before waiting for the commit (rare: the
        // socket took less than a few hundred bytes; boxed, like every rare wait here, so
        // an idle connection's future does not carry it).
        if !st.unsent.is_empty() && Box::pin(flush(&stream, &mut st.unsent)).await.is_err() {
            break;
        }
        match step {
            Step::More => {}
            Step::Close => break,
            Step::Commit(c) => {
                let res = w.committer.wait(c.ticket).await;
                let close = match answer_commit(&stream, &mut tls, &w, &mut st, c, res) {
                    Ok(close) => close,
                    Err(()) => break,
                };
                if !st.unsent.is_empty() && Box::pin(flush(&stream, &mut st.unsent)).await.is_err()
                {
                    break;
                }
                if close {
                    break;
                }
                // Requests read behind this one are in `pending`: go on with them first.
                process_pending = !st.pending.is_empty();
            }
        }
    }
    if st.aged {
        w.aged_out();
    }
    // Closed by the worker's closer, a round at a time between other tasks (see
    // `shared::close_ended`), not here: a close storm would run every close in one go.
    w.ended.borrow_mut().push((stream, permit));
    w.ended_wake.notify_one();
}

/// When an idle connection is closed: its idle timeout. Not its age: an aged connection is
/// closed by the `Connection: close` of its next answer, as nginx's `keepalive_time` does;
/// closing it while idle races the browser's next request on it (7.5 % of a keep-alive
/// fleet's requests failed that way with a 10 s age). (A function, not locals in [`run`]:
/// locals live across its awaits and every byte of its future is a byte per idle connection.)
fn idle_until(w: &Worker, last_active: TokioInstant) -> TokioInstant {
    last_active + w.idle_timeout
}

/// Decrements the open-connections gauge however the task ends.
struct Open<'a>(&'a Worker);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open.decrement(1.0);
    }
}

/// What ended a connection's wait.
enum Wake {
    Readable,
    Timer,
    Phase,
    Error,
}

/// Writes the answer to a committed request. `Ok(true)`: close after it.
fn answer_commit(
    stream: &TcpStream,
    tls: &mut Option<Box<TlsIo>>,
    w: &Worker,
    st: &mut State,
    c: Committed,
    res: Result<(), crate::spool::AppendError>,
) -> Result<bool, ()> {
    let app = w.app();
    let a = routes::after_commit(&app, &w.stats, c.route, c.built, c.cors, res);
    w.stats.answered(c.route, &a, c.started);
    let close = c.close || a.close || st.aged || app.is_draining();
    let mut out = w.out.borrow_mut();
    out.clear();
    let date = *w.date.borrow_mut().get();
    h1::write_answer(&mut out, &a, &date, c.to, After::close_if(close));
    send_plain(stream, tls, w, &out, &mut st.unsent).map_err(|_| ())?;
    Ok(close)
}

/// Answers a rejection found while waiting (408, 400) and lets the caller close.
async fn answer_and_close(stream: &TcpStream, tls: &mut Option<Box<TlsIo>>, w: &Worker, r: Reject) {
    let a = Answer::reject(&w.app(), r);
    w.stats.answered(Route::Beacon, &a, Instant::now());
    let mut out = Vec::new();
    h1::write_answer(
        &mut out,
        &a,
        w.date.borrow_mut().get(),
        AnswerTo::UNREAD,
        After::Close,
    );
    if let Some(t) = tls {
        out = t.encrypted(&out);
    }
    let _ = write_all(stream, &out).await;
}

/// Reads what the socket has and answers every complete request in it, up to the first that
/// needs a commit. `only_pending`: no read, go on with bytes already in `pending`.
/// `Ok(None)`: nothing to read after all. `Err`: close now.
fn read_and_process(
    stream: &TcpStream,
    tls: &mut Option<Box<TlsIo>>,
    conn: &Conn,
    w: &Worker,
    st: &mut State,
    only_pending: bool,
) -> Result<Option<Step>, End> {
    let mut scratch = w.scratch.borrow_mut();
    // TLS: the plaintext of a read lands here (the ciphertext took the scratch of `tls_conn`).
    let mut tls_plain = tls.as_ref().map(|_| w.tls_plain.borrow_mut());
    let use_scratch = st.pending.is_empty() && !only_pending;
    let mut n_scratch = 0;
    if let (Some(t), Some(plain), false) = (tls.as_mut(), tls_plain.as_mut(), only_pending) {
        // The plaintext of what arrived, on its own or after the unfinished request.
        plain.clear();
        let into = if use_scratch {
            &mut **plain
        } else {
            &mut st.pending
        };
        let handshaking = !t.established();
        let read = t.read(stream, w, into, &mut st.unsent)?;
        if handshaking && t.established() {
            // The handshake deadline is over; an idle connection now waits for its idle
            // timeout, as a plain one does (a request that arrives sets its own deadline).
            st.deadline = None;
        }
        match read {
            None => return Ok(None),
            Some(n) => n_scratch = n,
        }
    } else if !only_pending {
        let room;
        let read = if use_scratch {
            room = scratch.len();
            stream.try_read(&mut scratch[..])
        } else {
            // An unfinished request: the rest goes after it, in its own buffer.
            st.pending.reserve(st.pending.len().clamp(4096, 64 * 1024));
            room = st.pending.capacity() - st.pending.len();
            stream.try_read_buf(&mut st.pending)
        };
        match read {
            Ok(0) => return Err(End::Eof),
            Ok(n) => {
                n_scratch = n;
                if n < room {
                    // A short read took everything the socket had. Forget the readiness now
                    // instead of finding out with a second recv(2) returning EAGAIN: epoll is
                    // edge-triggered, so bytes arriving later raise a new event.
                    let _ = stream.try_io(tokio::io::Interest::READABLE, || {
                        Err::<(), io::Error>(io::ErrorKind::WouldBlock.into())
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(_) => return Err(End::Error),
        }
    }
    // What this read brought, when it is not appended to an unfinished request.
    let fresh: &[u8] = match &tls_plain {
        Some(plain) => &plain[..n_scratch.min(plain.len())],
        None => &scratch[..n_scratch],
    };
    let mut out = w.out.borrow_mut();
    out.clear();
    let (consumed, step) = if use_scratch {
        process(fresh, conn, w, st, &mut out)
    } else {
        let data = std::mem::take(&mut st.pending);
        let r = process(&data, conn, w, st, &mut out);
        st.pending = data;
        r
    };
    if use_scratch {
        let left = &fresh[consumed..];
        if !left.is_empty() && !matches!(step, Step::Close) {
            st.pending = left.to_vec();
        }
    } else if consumed == st.pending.len() {
        // Nothing unfinished: give the memory back (an idle connection owns no buffer).
        st.pending = Vec::new();
    } else {
        st.pending.drain(..consumed);
    }
    send_plain(stream, tls, w, &out, &mut st.unsent).map_err(|_| End::Error)?;
    Ok(Some(step))
}

/// A request's body, as far as it has arrived.
enum Body<'a> {
    /// Complete: the bytes and how many bytes of the connection they took.
    Here(&'a [u8], usize),
    /// Complete, decoded out of its chunks; and whether it can be skipped unread and the
    /// connection kept (at most one chunk with data: what hyper drains in one read).
    Decoded(Vec<u8>, usize, bool),
    /// Not all here yet.
    Partial,
    /// Framing error in the chunks.
    Bad(Reject),
}

/// Answers the complete requests at the start of `data` into `out`. Returns the bytes used
/// and what to do next; an unfinished request stays unused (the caller keeps it).
///
/// Longer than the house limit of ~120 lines on purpose: one pass of the per-request hot
/// path over borrowed state (the head's header slots borrow `data`); split into steps, each
/// would re-borrow and re-check the same parts, and the differential test compares this
/// function's answers with hyper's as a whole.
fn process(
    data: &[u8],
    conn: &Conn,
    w: &Worker,
    st: &mut State,
    out: &mut Vec<u8>,
) -> (usize, Step) {
    let app_ref = w.app();
    let app: &SharedState = &app_ref;
    let date = *w.date.borrow_mut().get();
    let max_head = app.max_head_bytes();
    let max_body = app.http.max_body_bytes;
    let max_headers = app.http.max_headers;
    let mut pos = 0;
    loop {
        if pos == data.len() {
            st.reset();
            return (pos, Step::More);
        }
        let buf = &data[pos..];
        let started = Instant::now();
        let mut stack = [const { std::mem::MaybeUninit::uninit() }; STACK_HEADERS];
        let mut heap = Vec::new();
        let hs: &mut [std::mem::MaybeUninit<httparse::Header<'_>>] = if max_headers <= STACK_HEADERS
        {
            &mut stack[..max_headers]
        } else {
            heap.resize_with(max_headers, std::mem::MaybeUninit::uninit);
            &mut heap[..]
        };
        let (ph, headers): (ParsedHead<'_>, &[httparse::Header<'_>]) =
            match h1::parse_head(buf, hs, max_head) {
                Ok(Some(x)) => x,
                Ok(None) => {
                    if st.deadline.is_none() {
                        st.deadline = Some(TokioInstant::now() + w.header_timeout);
                    }
                    return (pos, Step::More);
                }
                Err(r) => {
                    // Nothing that fails framing becomes a record; the connection closes.
                    let a = Answer::reject(app, r);
                    w.stats.framing_error(&a);
                    h1::write_answer(out, &a, &date, AnswerTo::UNREAD, After::Close);
                    return (pos, Step::Close);
                }
            };
        let (path, query) = split_target(ph.target);
        let head = Head {
            method: ph.method,
            path,
            query,
            target_len: path.len() + query.map_or(0, |q| q.len() + 1),
            headers,
        };
        let rest = &buf[ph.len..];
        let body = match ph.framing {
            Framing::None => Body::Here(&[], 0),
            Framing::Length(len) if rest.len() as u64 >= len => {
                Body::Here(&rest[..len as usize], len as usize)
            }
            Framing::Length(_) => Body::Partial,
            // Decoded below, once the head says whether the body is wanted (the body limit
            // applies only to a body that is read, as in the hyper engine).
            Framing::Chunked => Body::Partial,
        };
        let content_length = match ph.framing {
            Framing::Length(n) => Some(n),
            _ => None,
        };
        let to = AnswerTo::of(&ph);
        let charge = !st.head_charged;
        let next = routes::before_body(app, &w.stats, conn, &head, content_length, charge);
        let body = match ph.framing {
            Framing::Chunked => {
                let wanted = matches!(&next, Next::Accept(p) if p.media.is_some());
                match h1::decode_chunked(rest, if wanted { max_body } else { usize::MAX }) {
                    Ok(Chunked::Done(v, used, chunks)) => Body::Decoded(v, used, chunks <= 1),
                    Ok(Chunked::Incomplete) => Body::Partial,
                    Err(r) => Body::Bad(r),
                }
            }
            _ => body,
        };
        let mut plan = match next {
            Next::Answer(a) => {
                // The body is not needed: skipped when it is all here, else the connection
                // cannot be reused. A chunked body of several chunks is not skipped (like
                // hyper, which drains only what one read of the body decodes).
                let used = match &body {
                    Body::Here(_, used) => Some(*used),
                    Body::Decoded(_, used, true) => Some(*used),
                    _ => None,
                };
                let close =
                    a.close || !ph.keep_alive || used.is_none() || st.aged || app.is_draining();
                w.stats.answered(app.route(path).0, &a, started);
                h1::write_answer(out, &a, &date, to, After::close_if(close));
                if close {
                    return (pos, Step::Close);
                }
                pos += ph.len + used.unwrap_or(0);
                st.reset();
                continue;
            }
            Next::Accept(plan) => plan,
        };
        let route = plan.route;
        let needs_body = plan.media.is_some();
        let refuse = |r: Reject, cors: Option<Cors>, out: &mut Vec<u8>| {
            let mut a = Answer::reject(app, r);
            a.cors = cors;
            w.stats.answered(route, &a, started);
            h1::write_answer(out, &a, &date, to, After::Close);
            (pos, Step::Close)
        };
        // GET/HEAD carry no body we keep: one that is not all here yet is not waited for,
        // and the connection closes after the answer.
        let (body_bytes, used, close_after): (&[u8], usize, bool) = match &body {
            Body::Here(b, used) => (if needs_body { b } else { &[] }, *used, false),
            Body::Decoded(v, used, _) if needs_body => (&v[..], *used, false),
            Body::Decoded(_, used, skippable) => (&[], *used, !skippable),
            Body::Bad(r) if needs_body => return refuse(*r, plan.cors.take(), out),
            Body::Bad(_) => (&[], 0, true),
            Body::Partial if needs_body => {
                st.head_charged = true;
                if !st.head_done {
                    st.head_done = true;
                    st.deadline = Some(TokioInstant::now() + w.body_timeout);
                }
                if ph.expect_continue && !st.continued {
                    st.continued = true;
                    out.extend_from_slice(h1::CONTINUE);
                }
                // Chunk framing may add to the body's size; past this nothing honest is
                // still coming.
                if buf.len() > max_head + 2 * max_body + 64 * 1024 {
                    return refuse(Reject::BodyTooLarge, plan.cors.take(), out);
                }
                return (pos, Step::More);
            }
            Body::Partial => (&[], 0, true),
        };
        let cors = plan.cors.take();
        let pushed = w.committer.push(|group| {
            record_build::build_record(app, &w.stats, conn, &head, plan, body_bytes, group)
        });
        let close = close_after || !ph.keep_alive || st.aged;
        match pushed {
            Ok((built, ticket)) => {
                st.reset();
                let used_total = if close_after { 0 } else { ph.len + used };
                return (
                    pos + used_total,
                    Step::Commit(Committed {
                        ticket,
                        route,
                        built,
                        cors,
                        to,
                        close,
                        started,
                    }),
                );
            }
            Err(r) => {
                let mut a = Answer::reject(app, r);
                a.cors = cors;
                let close = close || a.close || st.aged || app.is_draining();
                w.stats.answered(route, &a, started);
                h1::write_answer(out, &a, &date, to, After::close_if(close));
                if close {
                    return (pos, Step::Close);
                }
                pos += ph.len + used;
                st.reset();
            }
        }
    }
}

impl State {
    /// A new connection's: nothing pending, reaching its age at `expires`.
    fn new(expires: u32) -> Self {
        State {
            pending: Vec::new(),
            unsent: Vec::new(),
            deadline: None,
            head_charged: false,
            continued: false,
            head_done: false,
            aged: false,
            expires,
        }
    }

    /// Between requests: no deadline, nothing charged.
    fn reset(&mut self) {
        self.deadline = None;
        self.head_charged = false;
        self.continued = false;
        self.head_done = false;
    }
}

/// Writes the answers in `out`, encrypted first on a TLS connection.
fn send_plain(
    stream: &TcpStream,
    tls: &mut Option<Box<TlsIo>>,
    w: &Worker,
    out: &[u8],
    unsent: &mut Vec<u8>,
) -> io::Result<()> {
    match tls {
        Some(t) => t.send(stream, w, out, unsent),
        None => send(stream, out, unsent),
    }
}

#[cfg(test)]
mod tests {
    //! The native engine's request processing fed bytes in process, no socket: framing,
    //! pipelining, partial reads and the answers it writes, as fast unit tests.

    use super::*;
    use crate::config::Config;
    use crate::ingest::commit::Committer;
    use crate::ingest::worker_state::Deadlines;
    use crate::record::{ClientIpSource, Kind};
    use std::sync::Arc;
    use std::time::Duration;

    /// One connection of a worker whose spool is in a temporary directory.
    struct Harness {
        w: Rc<Worker>,
        conn: Conn,
        st: State,
        _dir: tempfile::TempDir,
    }

    /// What one call of [`process`] did: bytes used, the step, the answers written.
    struct Fed {
        used: usize,
        step: Step,
        out: String,
    }

    impl Harness {
        fn new(edit: impl FnOnce(&mut Config)) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let mut c = Config::default();
            c.spool.dir = dir.path().join("spool");
            edit(&mut c);
            c.validate().unwrap();
            let (spool, _) = crate::spool::Spool::open(&c.spool, Duration::from_secs(1)).unwrap();
            let app = Arc::new(SharedState::new(&c, spool.clone()));
            let (_, phase) = tokio::sync::watch::channel(Phase::Running);
            let w = Rc::new(Worker::new(
                app,
                Committer::new(spool, 1024),
                phase,
                Deadlines {
                    idle: Duration::from_secs(75),
                    max_age: None,
                    header: Duration::from_secs(10),
                    body: Duration::from_secs(10),
                },
            ));
            let peer = "192.0.2.7:50000".parse().unwrap();
            let st = State::new(w.connection_expiry());
            Harness {
                conn: Conn::new(peer, std::net::SocketAddr::ip(&peer), ClientIpSource::Peer),
                w,
                st,
                _dir: dir,
            }
        }

        fn feed(&mut self, data: &[u8]) -> Fed {
            let mut out = Vec::new();
            let (used, step) = process(data, &self.conn, &self.w, &mut self.st, &mut out);
            Fed {
                used,
                step,
                out: String::from_utf8(out).unwrap(),
            }
        }
    }

    fn committed(f: &Fed) -> &Committed {
        match &f.step {
            Step::Commit(c) => c,
            Step::More => panic!("waiting for more, answers: {:?}", f.out),
            Step::Close => panic!("closing, answers: {:?}", f.out),
        }
    }

    fn statuses(out: &str) -> Vec<&str> {
        out.split("HTTP/1.1 ")
            .skip(1)
            .map(|a| a.split(' ').next().unwrap())
            .collect()
    }

    const GET: &[u8] = b"GET /beacon?u=https%3A%2F%2Fa.example%2F&t=1 HTTP/1.1\r\nHost: c\r\nUser-Agent: t\r\n\r\n";

    #[test]
    fn a_request_cut_anywhere_waits_for_the_rest_then_commits_once() {
        let mut h = Harness::new(|_| {});
        for cut in 1..GET.len() {
            let f = h.feed(&GET[..cut]);
            assert!(matches!(f.step, Step::More), "cut at {cut}");
            assert_eq!((f.used, f.out.as_str()), (0, ""), "cut at {cut}");
            assert!(h.st.deadline.is_some(), "header deadline armed at {cut}");
        }
        let f = h.feed(GET);
        let c = committed(&f);
        assert_eq!(f.used, GET.len());
        assert_eq!((c.built.kind, c.built.records), (Kind::Query, 1));
        assert!(f.out.is_empty(), "answered only after the commit");
        assert!(h.st.deadline.is_none(), "reset for the next request");
    }

    #[test]
    fn a_body_cut_anywhere_is_charged_once_and_continued_once() {
        let req: &[u8] = b"POST /beacon HTTP/1.1\r\nHost: c\r\nContent-Type: text/plain\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\nhello world";
        let head_len = req.len() - 11;
        let mut h = Harness::new(|_| {});
        let mut continues = 0;
        for cut in head_len..req.len() {
            let f = h.feed(&req[..cut]);
            assert!(matches!(f.step, Step::More), "cut at {cut}");
            continues += f.out.matches("100 Continue").count();
            assert!(h.st.head_charged && h.st.head_done, "cut at {cut}");
        }
        assert_eq!(continues, 1, "one 100 Continue per request");
        let f = h.feed(req);
        assert_eq!(committed(&f).built.kind, Kind::Text);
        assert_eq!(f.used, req.len());
    }

    #[test]
    fn pipelined_requests_are_answered_in_order_up_to_the_first_commit() {
        let mut data = Vec::new();
        data.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: c\r\n\r\n");
        data.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: c\r\n\r\n");
        let before_beacon = data.len();
        data.extend_from_slice(GET);
        data.extend_from_slice(GET);
        let mut h = Harness::new(|_| {});
        let f = h.feed(&data);
        committed(&f);
        assert_eq!(statuses(&f.out), ["200", "404"]);
        assert_eq!(f.used, before_beacon + GET.len(), "the second beacon waits");
        let f = h.feed(&data[before_beacon + GET.len()..]);
        committed(&f);
        assert_eq!(f.used, GET.len());
    }

    #[test]
    fn an_unwanted_body_all_here_is_skipped_and_the_connection_kept() {
        let mut data =
            b"GET /healthz HTTP/1.1\r\nHost: c\r\nContent-Length: 5\r\n\r\nhello".to_vec();
        data.extend_from_slice(GET);
        let mut h = Harness::new(|_| {});
        let f = h.feed(&data);
        committed(&f);
        assert_eq!(statuses(&f.out), ["200"]);
        assert!(!f.out.contains("connection: close"), "{}", f.out);
        assert_eq!(f.used, data.len());
    }

    #[test]
    fn ambiguous_framing_is_400_and_closes_before_any_record() {
        let mut h = Harness::new(|_| {});
        let f = h.feed(
            b"POST /beacon HTTP/1.1\r\nHost: c\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        );
        assert!(matches!(f.step, Step::Close));
        assert_eq!(statuses(&f.out), ["400"]);
        assert!(f.out.contains("connection: close"), "{}", f.out);
    }

    #[test]
    fn a_chunked_body_is_one_record_and_an_oversize_one_is_refused_unread() {
        let mut h = Harness::new(|_| {});
        let f = h.feed(b"POST /beacon HTTP/1.1\r\nHost: c\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n");
        assert_eq!(committed(&f).built.kind, Kind::Json);
        let mut h = Harness::new(|c| c.http.max_body_bytes = 1024);
        let f = h.feed(b"POST /beacon HTTP/1.1\r\nHost: c\r\nContent-Length: 999999\r\n\r\n");
        assert!(matches!(f.step, Step::Close));
        assert_eq!(statuses(&f.out), ["413"]);
    }
}
