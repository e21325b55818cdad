use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug)]
struct TestSlot(u32, Arc<AtomicBool>, SlotKey);
impl Slot for TestSlot {
    fn usable(&self) -> bool {
        self.1.load(Ordering::Relaxed)
    }
    fn key(&self) -> SlotKey {
        self.2
    }
}
fn slot(n: u32) -> TestSlot {
    TestSlot(n, Arc::new(AtomicBool::new(true)), SlotKey::NONE)
}

fn ticket(uri: &str) -> Ticket<'_> {
    Ticket { method: b"GET", uri: uri.as_bytes(), request_id: 7, started: Instant::now() }
}

async fn get(d: &Dispatcher<TestSlot>) -> Result<u32, AcquireError> {
    d.acquire(&ticket("/")).await.map(|s| s.0)
}

#[tokio::test]
async fn free_slot_is_immediate() {
    let d = Dispatcher::new(4, Duration::from_secs(1));
    d.release(slot(1));
    assert_eq!(get(&d).await, Ok(1));
}

#[tokio::test]
async fn overflow_is_rejected_at_once() {
    let d = Arc::new(Dispatcher::<TestSlot>::new(2, Duration::from_secs(30)));
    d.set_sizing(true, false);
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let d = d.clone();
        waiters.push(tokio::spawn(async move { get(&d).await }));
    }
    while d.waiting() < 2 {
        tokio::task::yield_now().await;
    }
    let started = std::time::Instant::now();
    assert!(matches!(get(&d).await, Err(AcquireError::QueueFull(2))));
    assert!(started.elapsed() < Duration::from_secs(1));
    d.release(slot(7));
    d.release(slot(8));
    let mut got = Vec::new();
    for w in waiters {
        got.push(w.await.ok().and_then(|r| r.ok()));
    }
    got.sort();
    assert_eq!(got, vec![Some(7), Some(8)]);
    let v = d.view();
    assert_eq!(v.counters.accepted, 3);
    assert_eq!(v.counters.rejected_queue_full, 1);
    assert_eq!(v.counters.max_queue, 2);
    // at its maximum: each request that waited counts (the refused one never waited)
    assert_eq!(v.counters.max_reached, 2);
}

#[tokio::test]
async fn queue_timeout() {
    let d = Dispatcher::<TestSlot>::new(2, Duration::from_millis(50));
    assert_eq!(get(&d).await, Err(AcquireError::Timeout(Duration::from_millis(50))));
    // The timed-out waiter does not count against the queue nor swallow a slot.
    assert_eq!(d.waiting(), 0);
    d.release(slot(3));
    assert_eq!(d.idle(), 1);
    assert_eq!(d.view().counters.rejected_queue_timeout, 1);
}

#[tokio::test]
async fn fifo_order() {
    let d = Arc::new(Dispatcher::<TestSlot>::new(8, Duration::from_secs(30)));
    let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..3u32 {
        let d2 = d.clone();
        let order_tx = order_tx.clone();
        tokio::spawn(async move {
            if let Ok(s) = get(&d2).await {
                let _ = order_tx.send((i, s));
            }
        });
        while d.waiting() < (i + 1) as usize {
            tokio::task::yield_now().await;
        }
    }
    for n in 10..13 {
        d.release(slot(n));
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(order_rx.recv().await);
    }
    assert_eq!(seen, vec![Some((0, 10)), Some((1, 11)), Some((2, 12))]);
}

#[tokio::test]
async fn dead_slots_are_skipped() {
    let d = Dispatcher::new(1, Duration::from_millis(10));
    let dead = slot(1);
    let flag = dead.1.clone();
    d.release(dead);
    d.release(slot(2));
    flag.store(false, Ordering::Relaxed);
    assert_eq!(get(&d).await, Ok(2));
    // Slot 1 is dead: nothing left.
    assert!(get(&d).await.is_err());
}

#[tokio::test]
async fn a_new_pools_first_request_is_no_max_children_reached() {
    // A new instance: its first request queues before its manager has started a worker.
    let d = Arc::new(Dispatcher::<TestSlot>::new(4, Duration::from_secs(30)));
    let first = tokio::spawn({
        let d = d.clone();
        async move { get(&d).await }
    });
    while d.waiting() < 1 {
        tokio::task::yield_now().await;
    }
    assert_eq!(d.view().counters.max_reached, 0);
    // The manager started its most workers (a static pool's): a request that waits counts.
    d.set_sizing(true, false);
    let second = tokio::spawn({
        let d = d.clone();
        async move { get(&d).await }
    });
    while d.waiting() < 2 {
        tokio::task::yield_now().await;
    }
    assert_eq!(d.view().counters.max_reached, 1);
    d.release(slot(1));
    d.release(slot(2));
    assert!(first.await.expect("first").is_ok() && second.await.expect("second").is_ok());
}

#[tokio::test]
async fn the_last_requests_end_is_kept() {
    let d = Dispatcher::<TestSlot>::new(4, Duration::from_secs(1));
    let w = d.add_worker(0);
    d.release(registered(&d, w, 1));
    assert_eq!(d.view().last_end, None, "a connection joining is no request ending");
    let s = d.acquire(&ticket("/")).await.expect("slot");
    let before = Instant::now();
    assert_eq!(d.view().last_end, None, "busy");
    d.release(s);
    assert!(d.view().last_end.is_some_and(|at| at >= before));
    // A request lost with its worker ended too.
    let s = d.acquire(&ticket("/")).await.expect("slot");
    let before = Instant::now();
    d.discard(s);
    assert!(d.view().last_end.is_some_and(|at| at >= before));
}

fn registered(d: &Dispatcher<TestSlot>, w: WorkerKey, n: u32) -> TestSlot {
    let key = d.add_conn(w, None).expect("worker exists");
    TestSlot(n, Arc::new(AtomicBool::new(true)), key)
}

#[tokio::test]
async fn per_worker_numbers_and_current_request() {
    let d = Dispatcher::<TestSlot>::new(4, Duration::from_secs(1));
    let w = d.add_worker(0);
    d.release(registered(&d, w, 1));
    d.release(registered(&d, w, 2));
    let t = Ticket { method: b"POST", uri: b"/upload?x=1", request_id: 42, started: Instant::now() };
    let s = d.acquire(&t).await.expect("slot");
    let v = d.worker_view(w, true).expect("worker");
    assert_eq!((v.busy, v.open, v.served), (1, 2, 0));
    assert_eq!(v.current.len(), 1);
    assert_eq!(
        (v.current[0].method.as_str(), v.current[0].uri.as_str(), v.current[0].request_id),
        ("POST", "/upload?x=1", 42)
    );
    d.release(s);
    let v = d.worker_view(w, true).expect("worker");
    assert_eq!((v.busy, v.open, v.served), (0, 2, 1));
    assert!(v.current.is_empty());
    let p = d.view();
    assert_eq!((p.idle_slots, p.busy_slots, p.counters.served), (2, 0, 1));
}

#[tokio::test]
async fn requests_spread_over_workers_before_doubling_up() {
    // Two workers of three slots each, all free, the second worker's slots freed last:
    // plain LIFO would hand all three requests to worker b.
    let d = Dispatcher::<TestSlot>::new(4, Duration::from_secs(1));
    let (a, b) = (d.add_worker(0), d.add_worker(0));
    for (w, first) in [(a, 10), (b, 20)] {
        for n in first..first + 3 {
            d.release(registered(&d, w, n));
        }
    }
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(d.acquire(&ticket("/")).await.expect("slot"));
    }
    let busy = |w| d.worker_view(w, false).expect("worker").busy;
    assert_eq!((busy(a), busy(b)), (2, 2));
    // Within a worker the most recently freed slot goes first (its buffers are warm).
    let mut got: Vec<u32> = held.iter().map(|s| s.0).collect();
    got.sort_unstable();
    assert_eq!(got, vec![11, 12, 21, 22]);
}

#[tokio::test]
async fn a_request_sent_again_waits_at_the_front_and_is_not_counted_twice() {
    let d = Arc::new(Dispatcher::<TestSlot>::new(1, Duration::from_secs(30)));
    let d2 = d.clone();
    let first = tokio::spawn(async move { d2.acquire(&ticket("/first")).await.map(|s| s.0) });
    while d.waiting() < 1 {
        tokio::task::yield_now().await;
    }
    // The queue (size 1) is full, but a request admitted before still gets in, in front.
    let d3 = d.clone();
    let again = tokio::spawn(async move { d3.acquire_again(&ticket("/again")).await.map(|s| s.0) });
    while d.waiting() < 2 {
        tokio::task::yield_now().await;
    }
    d.release(slot(1));
    assert_eq!(again.await.expect("task"), Ok(1), "the request sent again went first");
    d.release(slot(2));
    assert_eq!(first.await.expect("task"), Ok(2));
    let c = d.view().counters;
    assert_eq!((c.accepted, c.rejected_queue_full), (1, 0));
}

#[test]
fn long_uris_are_truncated_not_refused() {
    let long = "/x".repeat(400);
    let l = Label::of(&Ticket { method: b"GET", uri: long.as_bytes(), request_id: 1, started: Instant::now() });
    assert_eq!(l.method(), "GET");
    assert_eq!(l.uri().len(), LABEL_BYTES - 3);
    assert!(long.starts_with(&l.uri()));
}

#[test]
fn a_label_shows_the_clients_text_escaped() {
    let t = Ticket { method: b"GE\x1bT", uri: b"/a\nFORGED\x1b[2J", request_id: 1, started: Instant::now() };
    let l = Label::of(&t);
    assert_eq!((l.method(), l.uri()), ("GE\\x1bT".to_owned(), "/a\\nFORGED\\x1b[2J".to_owned()));
}

#[tokio::test]
async fn a_waiter_handed_a_slot_shows_as_its_request() {
    let d = Arc::new(Dispatcher::<TestSlot>::new(4, Duration::from_secs(5)));
    let w = d.add_worker(0);
    let first = {
        d.release(registered(&d, w, 1));
        d.acquire(&ticket("/first")).await.expect("slot")
    };
    let d2 = d.clone();
    let waiter = tokio::spawn(async move { d2.acquire(&ticket("/second")).await.map(|s| s.0) });
    while d.waiting() < 1 {
        tokio::task::yield_now().await;
    }
    d.release(first);
    assert_eq!(waiter.await.ok(), Some(Ok(1)));
    let v = d.worker_view(w, true).expect("worker");
    assert_eq!(v.current.iter().map(|c| c.uri.as_str()).collect::<Vec<_>>(), ["/second"]);
    assert_eq!(v.served, 1);
}

#[tokio::test]
async fn draining_closes_free_slots_now_and_busy_ones_at_release() {
    let d = Dispatcher::<TestSlot>::new(4, Duration::from_millis(20));
    let w = d.add_worker(0);
    let other = d.add_worker(0);
    d.release(registered(&d, w, 1));
    d.release(registered(&d, w, 2));
    let busy = d.acquire(&ticket("/")).await.expect("slot");
    assert_eq!(d.drain_worker(w), 1, "the free slot closed at once");
    assert_eq!(d.idle(), 0);
    // a new request does not get the draining worker's slot back
    d.release(busy);
    assert!(get(&d).await.is_err());
    assert_eq!(d.worker_view(w, false).map(|v| (v.open, v.served)), Some((0, 1)));
    // a connection to a draining worker is refused; other workers are unaffected
    assert!(d.add_conn(w, None).is_none());
    d.release(registered(&d, other, 9));
    assert_eq!(get(&d).await, Ok(9));
}

#[tokio::test]
async fn max_requests_flags_the_worker_and_wakes_the_manager() {
    let d = Dispatcher::<TestSlot>::new(4, Duration::from_secs(1));
    let w = d.add_worker(2);
    d.release(registered(&d, w, 1));
    for i in 0..2 {
        let s = d.acquire(&ticket("/")).await.expect("slot");
        assert!(!d.worker_view(w, false).expect("w").max_requests_reached, "after {i}");
        d.release(s);
    }
    assert!(d.worker_view(w, false).expect("w").max_requests_reached);
    // the notification was stored for the manager
    tokio::time::timeout(Duration::from_millis(100), d.wake.notified()).await.expect("woken");
    // the slot keeps serving until the manager decides
    assert_eq!(get(&d).await, Ok(1));
}

#[tokio::test]
async fn unavailable_answers_at_once_and_releases_waiters() {
    let d = Arc::new(Dispatcher::<TestSlot>::new(4, Duration::from_secs(30)));
    let d2 = d.clone();
    let waiter = tokio::spawn(async move { get(&d2).await });
    while d.waiting() < 1 {
        tokio::task::yield_now().await;
    }
    let started = std::time::Instant::now();
    d.set_unavailable(Some(Arc::from("the app cannot start")));
    assert_eq!(waiter.await.ok(), Some(Err(AcquireError::Unavailable(Arc::from("the app cannot start")))));
    assert!(matches!(get(&d).await, Err(AcquireError::Unavailable(_))));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(d.view().counters.rejected_unavailable, 2);
    // a free slot is still handed out
    d.release(slot(5));
    assert_eq!(get(&d).await, Ok(5));
    d.set_unavailable(None);
    assert!(matches!(get(&d).await, Err(AcquireError::Timeout(_))));
}

#[tokio::test]
async fn overdue_requests_are_cancelled_once() {
    let d = Dispatcher::<TestSlot>::new(4, Duration::from_secs(1));
    let w = d.add_worker(0);
    let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
    let flag = Arc::new(AtomicBool::new(false));
    let key = d.add_conn(w, Some(Canceller { fd: OwnedFd::from(a), flag: flag.clone() })).expect("conn");
    d.release(TestSlot(1, Arc::new(AtomicBool::new(true)), key));
    let old =
        Ticket { method: b"GET", uri: b"/hang", request_id: 3, started: Instant::now() - Duration::from_secs(10) };
    let s = d.acquire(&old).await.expect("slot");
    let later = d.cancel_overdue(Duration::from_secs(60));
    assert!(later.due.is_empty());
    // It would be due 60 s after it began: the manager is told when.
    assert_eq!(later.next_at, Some(old.started + Duration::from_secs(60)));
    let over = d.cancel_overdue(Duration::from_secs(5)).due;
    assert_eq!(over.len(), 1);
    assert_eq!((over[0].uri.as_str(), over[0].request_id, over[0].worker), ("/hang", 3, w));
    assert!(flag.load(Ordering::Acquire));
    // the socket was shut down: the peer reads EOF
    let mut buf = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut &b, &mut buf).ok(), Some(0));
    let again = d.cancel_overdue(Duration::from_secs(5));
    assert!(again.due.is_empty(), "reported once");
    assert_eq!(again.next_at, None, "a timed-out request is not due again");
    assert_eq!(d.view().counters.request_timeouts, 1);
    // a timed-out slot never goes back to the pool
    d.release(s);
    assert_eq!(d.idle(), 0);
}

fn req(uri: &str, request_id: u64) -> Ticket<'_> {
    Ticket { method: b"GET", uri: uri.as_bytes(), request_id, started: Instant::now() }
}

#[tokio::test]
async fn an_abandoned_request_keeps_its_slot_busy_and_is_not_waited_for_by_a_drain() {
    let d = Dispatcher::<TestSlot>::new(4, Duration::from_secs(1));
    let w = d.add_worker(0);
    d.release(registered(&d, w, 1));
    d.release(registered(&d, w, 2));
    let slow = d.acquire(&req("/slow", 5)).await.expect("slot");
    let other = d.acquire(&req("/other", 6)).await.expect("slot");
    assert!(d.abandon(slow.key()));
    assert!(!d.abandon(slow.key()), "told once");
    let told = d.take_abandoned();
    assert_eq!(told.len(), 1);
    assert_eq!((told[0].worker, told[0].request_id, told[0].uri.as_str()), (w, 5, "/slow"));
    assert!(d.take_abandoned().is_empty());
    tokio::time::timeout(Duration::from_millis(100), d.wake.notified()).await.expect("the manager woken");
    // Its thread still runs it: the slot stays busy.
    let v = d.worker_view(w, false).expect("worker");
    assert_eq!((v.busy, v.open, v.abandoned), (2, 2, 1));
    assert_eq!((d.view().busy_slots, d.view().abandoned_slots), (2, 1));
    // No request-timeout for it: its client is gone and its worker is being replaced.
    assert!(d.cancel_overdue(Duration::ZERO).due.iter().all(|o| o.request_id != 5));
    // A drain waits for the other request only, and is told when that one is done.
    assert_eq!(d.drain_worker(w), 1);
    d.release(other);
    tokio::time::timeout(Duration::from_millis(100), d.wake.notified()).await.expect("woken: nothing left to wait for");
    assert_eq!(d.worker_view(w, false).map(|v| (v.open, v.abandoned)), Some((1, 1)));
    // The worker ends it after all (or dies): nothing abandoned is left.
    d.discard(slow);
    assert_eq!(d.worker_view(w, false).map(|v| (v.open, v.busy, v.abandoned)), Some((0, 0, 0)));
}

#[tokio::test]
async fn a_dead_workers_lost_requests_leave_out_those_sent_again_elsewhere() {
    let d = Arc::new(Dispatcher::<TestSlot>::new(4, Duration::from_secs(30)));
    let w = d.add_worker(0);
    for n in 1..=3 {
        d.release(registered(&d, w, n));
    }
    let crash = d.acquire(&req("/crash", 1)).await.expect("slot");
    let _busy = d.acquire(&req("/busy", 2)).await.expect("slot");
    let _resent = d.acquire(&req("/resent", 3)).await.expect("slot");
    // The request that killed it: its connection broke and was given up before the
    // manager heard of the exit.
    d.discard(crash);
    // Its first write failed on a dead connection: the request waits for another slot.
    let d2 = d.clone();
    let again = tokio::spawn(async move { d2.acquire_again(&req("/resent", 3)).await.map(|s| s.0) });
    while d.waiting() < 1 {
        tokio::task::yield_now().await;
    }
    let lost: Vec<String> = d.lost_requests(w).iter().map(|r| format!("{} {}", r.request_id, r.uri)).collect();
    assert_eq!(lost, ["1 /crash", "2 /busy"]);
    again.abort();
}

mod pipeline {
    use super::*;
    use crate::claim::ClaimPage;

    fn ticket_n(n: u64) -> Ticket<'static> {
        Ticket { method: b"GET", uri: b"/", request_id: n, started: Instant::now() }
    }

    /// A pool of one worker with two connections, both busy; two requests waiting, each with
    /// its whole first write kept.
    async fn busy_pool() -> (Arc<Dispatcher<TestSlot>>, [TestSlot; 2], Vec<tokio::task::JoinHandle<Granted<TestSlot>>>)
    {
        let d = Arc::new(Dispatcher::<TestSlot>::new(8, Duration::from_secs(30)));
        let w = d.add_worker(0);
        d.release(registered(&d, w, 1));
        d.release(registered(&d, w, 2));
        let s1 = d.acquire(&ticket_n(1)).await.expect("a");
        let s2 = d.acquire(&ticket_n(2)).await.expect("b");
        let (a, b) = if s1.0 == 1 { (s1, s2) } else { (s2, s1) };
        let mut waiting = Vec::new();
        for n in [3u64, 4] {
            let d2 = d.clone();
            waiting.push(tokio::spawn(async move {
                let kept = Some(Bytes::from_static(b"first write"));
                d2.acquire_piped(&ticket_n(n), kept, std::future::pending()).await.expect("granted")
            }));
            while d.waiting() < n as usize - 2 {
                tokio::task::yield_now().await;
            }
        }
        (d, [a, b], waiting)
    }

    #[tokio::test]
    async fn a_piped_request_gets_its_connection_at_the_hand_over() {
        let page = Arc::new(ClaimPage::new().expect("page"));
        let (d, [a, b], mut waiting) = busy_pool().await;
        let (first, tag) = d.pipe_onto(a.key(), &page, 0).expect("the oldest waiter is piped");
        assert_eq!(&first[..], b"first write");
        assert!(d.pipe_onto(a.key(), &page, 1).is_none(), "one deep");
        assert!(page.start(0, tag), "the worker claims it");
        d.release(a);
        let g = waiting.remove(0).await.expect("task");
        assert_eq!((g.slot.0, g.sent), (1, Some((0, tag))), "handed over, already sent");
        assert_eq!(d.view().counters.piped, 1);
        d.release(b);
        assert_eq!(waiting.remove(0).await.expect("task").slot.0, 2);
    }

    #[tokio::test]
    async fn a_free_slot_takes_back_a_request_piped_behind_a_slow_one() {
        let page = Arc::new(ClaimPage::new().expect("page"));
        let (d, [a, b], mut waiting) = busy_pool().await;
        let (_, tag) = d.pipe_onto(a.key(), &page, 0).expect("piped");
        tokio::time::sleep(TAKE_BACK_AFTER * 2).await;
        d.release(b);
        let g = waiting.remove(0).await.expect("task");
        assert_eq!((g.slot.0, g.sent), (2, None), "moved to the free slot, to be sent again");
        assert!(!page.start(0, tag), "the worker finds it withdrawn");
        assert_eq!(d.view().counters.withdrawn, 1);
        d.release(a);
        assert_eq!(waiting.remove(0).await.expect("task").slot.0, 1);
    }

    #[tokio::test]
    async fn a_slot_that_would_go_idle_takes_back_a_piped_request_at_once() {
        // The request in front has run for less than TAKE_BACK_AFTER when a slot frees up
        // and nobody waits: were the slot left idle, nothing later would take the piped
        // request from behind a request in front that turns out slow.
        let page = Arc::new(ClaimPage::new().expect("page"));
        let (d, [a, b], mut waiting) = busy_pool().await;
        d.release(b);
        let b = waiting.remove(0).await.expect("task").slot;
        let (_, tag) = d.pipe_onto(b.key(), &page, 1).expect("piped");
        d.release(a);
        let g = tokio::time::timeout(Duration::from_secs(10), waiting.remove(0))
            .await
            .expect("the piped request took the free slot")
            .expect("task");
        assert_eq!((g.slot.0, g.sent), (1, None), "moved to the free slot, to be sent again");
        assert!(!page.start(1, tag), "the worker finds it withdrawn");
        assert_eq!(d.idle(), 0);
    }

    #[tokio::test]
    async fn the_request_piped_behind_an_abandoned_one_goes_back_to_the_queue() {
        let page = Arc::new(ClaimPage::new().expect("page"));
        let (d, [a, b], mut waiting) = busy_pool().await;
        let (_, tag) = d.pipe_onto(a.key(), &page, 0).expect("piped");
        assert!(d.abandon(a.key()));
        d.release(b);
        let g = waiting.remove(0).await.expect("task");
        assert_eq!((g.slot.0, g.sent), (2, None), "moved to the next free slot, to be sent again");
        assert!(!page.start(0, tag), "the worker finds it withdrawn");
    }

    #[tokio::test]
    async fn a_started_request_is_not_taken_back_and_a_failed_connection_requeues_one_that_was_not() {
        let page = Arc::new(ClaimPage::new().expect("page"));
        let (d, [a, b], mut waiting) = busy_pool().await;
        let (_, tag) = d.pipe_onto(a.key(), &page, 0).expect("piped");
        assert!(page.start(0, tag), "the worker won the race");
        tokio::time::sleep(TAKE_BACK_AFTER * 2).await;
        d.release(b);
        // The free slot went to the other waiter; the started one waits for its hand-over.
        assert_eq!(waiting.remove(1).await.expect("task").slot.0, 2);
        d.release(a);
        assert_eq!(waiting.remove(0).await.expect("task").sent, Some((0, tag)));
        // Now piped again behind a request whose connection fails before it started.
        let (d, [a, b], mut waiting) = busy_pool().await;
        d.pipe_onto(a.key(), &page, 0).expect("piped");
        d.unpipe(a.key());
        d.discard(a);
        d.release(b);
        let g = waiting.remove(0).await.expect("task");
        assert_eq!((g.slot.0, g.sent), (2, None), "back at the front of the queue");
    }
}
