//! The manager's decisions on made-up instants: no process, no dispatcher, no clock.
use super::*;

fn sup(f: impl FnOnce(&mut Supervision)) -> Supervision {
    let mut s = Supervision::default();
    f(&mut s);
    s
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn sizing(f: impl FnOnce(&mut Sizing)) -> Sizing {
    let mut z = Sizing { threads: 4, processes: 8, budget: 32, ..Default::default() };
    f(&mut z);
    z
}

fn ready(id: u64, t0: Instant, recycle_urgent: Option<bool>) -> Member {
    Member { id, state: State::Ready, spawned_at: t0 + secs(id), recycle_urgent, busy: 0 }
}

fn roster(mode: Mode, want: usize, members: Vec<Member>) -> Roster {
    Roster { mode, want, failing: false, next_spawn_at: None, members }
}

#[test]
fn backoff_doubles_to_its_cap() {
    let mut b = Duration::ZERO;
    let seen: Vec<Duration> = (0..10)
        .map(|_| {
            b = next_backoff(b);
            b
        })
        .collect();
    assert_eq!(&seen[..3], &[BACKOFF_START, BACKOFF_START * 2, BACKOFF_START * 4]);
    assert_eq!(seen[9], BACKOFF_MAX);
    assert!(seen.windows(2).all(|w| w[1] >= w[0]));
}

#[test]
fn backoff_resets_after_a_healthy_run_only() {
    let t0 = Instant::now();
    let b = secs(4);
    // Crashed before becoming ready, or soon after: the backoff grows.
    assert_eq!(backoff_after_crash(b, None, t0), Some(secs(8)));
    assert_eq!(backoff_after_crash(b, Some(t0), t0 + Duration::from_millis(999)), Some(secs(8)));
    // Ran healthily first: replaced at once, the backoff is left alone.
    assert_eq!(backoff_after_crash(b, Some(t0), t0 + HEALTHY_AFTER), None);
    // A round with a healthy worker clears it; one without keeps it.
    assert!(healthy(Some(t0), t0 + HEALTHY_AFTER));
    assert_eq!(backoff_after_round(b, true), Duration::ZERO);
    assert_eq!(backoff_after_round(b, false), b);
}

#[test]
fn a_worker_that_dies_serving_a_request_is_replaced_at_once_however_young() {
    let t0 = Instant::now();
    // A bad URL (os._exit, a segfault) hit now and then between healthy requests: a
    // worker that served one is no start-up crash. No delay: one 502 per hit, not a pool
    // left without workers for minutes.
    let mut deaths = ServingDeaths::default();
    let mut r = roster(Mode::Static, 4, (0..3).map(|i| ready(i, t0, None)).collect());
    for hit in 0..40 {
        let died = t0 + Duration::from_millis(10 * hit);
        if let Some(d) = deaths.after_death(Some(died - Duration::from_millis(5)), 1, died) {
            r.next_spawn_at = Some(died + d);
        }
        assert_eq!(plan(&r, died), vec![Action::Spawn(1)], "hit {hit}: replaced at once");
    }
    // Fresh workers that each die on their first request: the first few are replaced at
    // once (a burst of hits on one bad URL)…
    for hit in 0..SERVING_DEATHS_FREE {
        let died = t0 + Duration::from_millis(10 * u64::from(hit));
        assert_eq!(deaths.after_death(Some(died), 0, died), None, "hit {hit}");
    }
    // …then each replacement waits, the delay growing to its cap.
    let at = |n: u64| t0 + Duration::from_millis(500 * n);
    let delays: Vec<_> = (1..7).map(|n| deaths.after_death(Some(at(n)), 0, at(n))).collect();
    let ms = |n| Some(Duration::from_millis(n));
    assert_eq!(delays, [ms(500), ms(1000), ms(2000), ms(2000), ms(2000), ms(2000)]);
    assert_eq!(deaths.count(), SERVING_DEATHS_FREE + 6);
    // A worker that served a request ends the streak (and is replaced at once); so does a
    // worker ready for the window, or a window without such a death.
    let t1 = at(7);
    assert_eq!(deaths.after_death(Some(t1), 1, t1), None);
    let streak = |d: &mut ServingDeaths, from: Instant| {
        (0..=SERVING_DEATHS_FREE).map(|i| d.after_death(None, 0, from + secs(i.into()))).collect::<Vec<_>>()
    };
    let braked = |v: &[Option<Duration>]| v.iter().filter(|d| d.is_some()).count();
    assert_eq!(braked(&streak(&mut deaths, t1)), 1, "counted afresh: only the fourth waits");
    let t2 = t1 + secs(10);
    assert_eq!(deaths.after_death(Some(t2 - SERVING_DEATH_WINDOW), 0, t2), None);
    assert_eq!(braked(&streak(&mut deaths, t2)), 1);
    let t3 = t2 + secs(10) + SERVING_DEATH_WINDOW;
    assert_eq!(braked(&streak(&mut deaths, t3)), 1);
    // Dying young while serving nothing is still a start-up crash.
    assert_eq!(backoff_after_crash(secs(4), Some(t0), t0 + Duration::from_millis(10)), Some(secs(8)));
}

#[test]
fn an_exit_line_names_a_few_requests_and_counts_the_rest() {
    let items = |n: usize| (1..=n).map(|i| format!("GET /{i}"));
    assert_eq!(list_at_most(items(2), 2, 5), "GET /1, GET /2");
    assert_eq!(list_at_most(items(5), 5, 5), "GET /1, GET /2, GET /3, GET /4, GET /5");
    assert_eq!(list_at_most(items(300), 300, 5), "GET /1, GET /2, GET /3, GET /4, GET /5 … and 295 more");
}

#[test]
fn an_abandoned_request_replaces_its_worker_like_a_request_timeout() {
    let r = Recycle::after_abandoned(None, "aborted request not ended (GET /slow ran 5s)".into());
    assert_eq!((r.urgent, r.hard), (true, true), "no new requests, killed once drained");
    assert_eq!(r.reason, "aborted request not ended (GET /slow ran 5s)");
    // Over a calm recycle that was waiting for its replacement.
    let calm = Recycle::calm("max-requests (9 served)".into());
    assert_eq!(Recycle::after_abandoned(Some(&calm), "aborted".into()).reason, "aborted");
    // A request-timeout already replacing it keeps its reason.
    let timeout = Recycle { reason: "request-timeout (GET /x ran 30s)".into(), urgent: true, hard: true };
    assert_eq!(Recycle::after_abandoned(Some(&timeout), "aborted".into()), timeout);
    // It stops taking requests at once while another worker serves, and a replacement
    // starts; the only worker keeps serving until its replacement is ready.
    let t0 = Instant::now();
    let two = vec![ready(0, t0, Some(true)), ready(1, t0, None)];
    assert_eq!(plan(&roster(Mode::Static, 2, two), t0), vec![Action::Retire(0), Action::Spawn(1)]);
    assert_eq!(plan(&roster(Mode::Static, 1, vec![ready(0, t0, Some(true))]), t0), vec![Action::Spawn(1)]);
}

#[test]
fn only_the_current_generation_resets_the_backoff() {
    let t0 = Instant::now();
    let later = t0 + HEALTHY_AFTER;
    // A rolling restart whose new code fails to import: the previous generation serves
    // healthily, which must not reset the new generation's backoff.
    assert!(!resets_backoff(1, 2, Some(t0), later));
    assert!(resets_backoff(2, 2, Some(t0), later));
    assert!(!resets_backoff(2, 2, Some(t0), t0 + Duration::from_millis(999)));
    assert!(!resets_backoff(2, 2, None, later));
    // So the failures back off 0.5 s, 1 s, 2 s… although old workers are healthy every round.
    let mut b = Duration::ZERO;
    for _ in 0..4 {
        b = next_backoff(b);
        b = backoff_after_round(b, resets_backoff(1, 2, Some(t0), later));
    }
    assert_eq!(b, BACKOFF_START * 8);
}

#[test]
fn a_failing_rollout_is_its_own_state() {
    let running = PoolState { active: 2, total: 2, ..Default::default() };
    assert_eq!(pool_state(&running), "running");
    let rollout = PoolState { failing: true, outdated: 2, ..running };
    assert_eq!(pool_state(&rollout), "rollout-failing");
    // Failing with nothing serving is plain failing, old workers or not.
    assert_eq!(pool_state(&PoolState { active: 0, ..rollout }), "failing");
    // One worker failing among current ones is not a rollout.
    assert_eq!(pool_state(&PoolState { outdated: 0, ..rollout }), "running");
    assert_eq!(pool_state(&PoolState { removing: true, ..rollout }), "removing");
    assert_eq!(pool_state(&PoolState { ondemand: true, ..Default::default() }), "idle");
    assert_eq!(pool_state(&PoolState::default()), "starting");
}

#[test]
fn crash_loop_starts_one_at_a_time_and_waits_out_the_backoff() {
    let t0 = Instant::now();
    let mut r = roster(Mode::Static, 4, vec![]);
    assert_eq!(plan(&r, t0), vec![Action::Spawn(4)]);
    r.failing = true;
    assert_eq!(plan(&r, t0), vec![Action::Spawn(1)]);
    r.members.push(Member { state: State::Starting, ..ready(1, t0, None) });
    assert_eq!(plan(&r, t0), vec![], "one attempt at a time while failing");
    r.members.clear();
    r.next_spawn_at = Some(t0 + BACKOFF_START);
    assert_eq!(plan(&r, t0), vec![]);
    assert_eq!(plan(&r, t0 + BACKOFF_START), vec![Action::Spawn(1)]);
}

#[test]
fn dynamic_grows_for_spare_threads_and_the_queue() {
    let s = sup(|s| {
        s.mode = Mode::Dynamic;
        s.spare_processes = 2;
    });
    // 2 spare processes of 4 threads = 8 free threads wanted; 3 free: 2 more workers.
    let g = grow(
        &s,
        &sizing(|z| {
            z.idle_slots = 3;
            z.total = 2;
            z.good_total = 2;
        }),
    );
    assert_eq!(g, Grow { start: 2, rate_limited: false, target: 4 });
    // Enough free threads, counting those of workers still starting: nothing.
    assert_eq!(
        grow(
            &s,
            &sizing(|z| {
                z.idle_slots = 4;
                z.starting = 1;
                z.total = 3;
            })
        )
        .start,
        0
    );
    // A queue of 9 waiting with no spare wanted: 3 workers of 4 threads, capped by processes.
    let ondemand = sup(|s| s.mode = Mode::OnDemand);
    assert_eq!(grow(&ondemand, &sizing(|z| z.queue_now = 9)).start, 3);
    assert_eq!(
        grow(
            &ondemand,
            &sizing(|z| {
                z.queue_now = 90;
                z.total = 6;
            })
        )
        .start,
        2
    );
}

#[test]
fn spawn_budget_limits_growth_and_the_rate_doubles_to_its_cap() {
    let s = sup(|s| s.mode = Mode::OnDemand);
    let g = grow(
        &s,
        &sizing(|z| {
            z.queue_now = 20;
            z.budget = 1;
        }),
    );
    assert_eq!(g, Grow { start: 1, rate_limited: true, target: 1 });
    let mut rate = 1;
    let rates: Vec<u32> = (0..5)
        .map(|_| {
            rate = next_spawn_rate(rate, true, 8);
            rate
        })
        .collect();
    assert_eq!(rates, vec![2, 4, 8, 8, 8]);
    assert_eq!(next_spawn_rate(8, false, 8), 1);
}

#[test]
fn dynamic_shrinks_idle_workers_but_keeps_spare_and_min() {
    let s = sup(|s| {
        s.mode = Mode::Dynamic;
        s.min_processes = 1;
        s.spare_processes = 1;
    });
    // Retiring a 4-thread worker must leave 4 free threads: 8 free allows it, 7 does not.
    assert!(may_retire_idle(&s, 3, 8, 4));
    assert!(!may_retire_idle(&s, 3, 7, 4));
    assert!(!may_retire_idle(&s, 1, 100, 4), "min-processes stay");
}

#[test]
fn ondemand_stops_workers_idle_for_idle_timeout() {
    let t0 = Instant::now();
    let s = sup(|s| {
        s.mode = Mode::OnDemand;
        s.idle_timeout = secs(10);
    });
    let idle = [(1, Some(t0 + secs(2))), (2, Some(t0)), (3, None), (4, Some(t0 + secs(5)))];
    assert_eq!(idle_candidates(&idle, s.idle_timeout, t0 + secs(9)), vec![]);
    // Longest idle first; one that served since is not idle.
    assert_eq!(idle_candidates(&idle, s.idle_timeout, t0 + secs(12)), vec![(t0, 2), (t0 + secs(2), 1)]);
    assert!(may_retire_idle(&s, 1, 0, 4), "ondemand goes down to zero, no spare");
    assert!(still_idle(0, 7, 7));
    assert!(!still_idle(1, 7, 7));
    assert!(!still_idle(0, 8, 7));
}

#[test]
fn max_requests_jitter_spreads_over_its_range() {
    let s = sup(|s| {
        s.max_requests = Some(100);
        s.max_requests_jitter = 10;
    });
    let mut spread = Spread::new(42);
    let drawn: std::collections::BTreeSet<u64> = (0..500).map(|_| max_requests_for(&s, &mut spread)).collect();
    assert_eq!(drawn.first(), Some(&100));
    assert_eq!(drawn.last(), Some(&110));
    assert!(drawn.len() >= 9, "spread: {drawn:?}");
    assert_eq!(max_requests_for(&Supervision::default(), &mut spread), 0);
    assert_eq!(max_requests_for(&sup(|s| s.max_requests = Some(5)), &mut spread), 5);
}

#[test]
fn max_requests_waits_for_min_lifetime() {
    let t0 = Instant::now();
    let s = sup(|s| s.min_lifetime = secs(30));
    assert_eq!(flagged(&s, None, Some(9), Some(t0), t0 + secs(29)), None);
    let r = flagged(&s, None, Some(9), Some(t0), t0 + secs(30)).expect("recycled");
    assert_eq!((r.reason.as_str(), r.urgent, r.hard), ("max-requests (9 served)", false, false));
    assert_eq!(flagged(&s, None, None, Some(t0), t0 + secs(99)), None);
    assert!(flagged(&s, Some(RolloutCause::Changed), None, Some(t0), t0)
        .is_some_and(|r| r.reason == "reload (configuration changed)"));
    assert!(flagged(&s, Some(RolloutCause::Restart), None, Some(t0), t0)
        .is_some_and(|r| r.reason == "restart requested (reload --restart-workers or SIGUSR2)"));
}

#[test]
fn a_later_rollout_gives_its_own_reason() {
    let t0 = Instant::now();
    let s = Supervision::default();
    let by = |cause| flagged(&s, Some(cause), None, Some(t0), t0).expect("flagged");
    // What a rollout flagged takes the next one's reason; a limit's or a timeout's stays.
    assert!(RolloutCause::gave(&by(RolloutCause::Changed)));
    assert!(RolloutCause::gave(&by(RolloutCause::Touched)));
    let served = flagged(&sup(|s| s.min_lifetime = secs(0)), None, Some(9), Some(t0), t0).expect("max-requests");
    assert!(!RolloutCause::gave(&served));
    assert!(!RolloutCause::gave(&Recycle {
        reason: "request-timeout (GET /x ran 30s)".into(),
        urgent: true,
        hard: true
    }));
    // A restart after a reload that changed the configuration at generation 1: a worker of
    // generation 0 goes for both, one started with the change for the restart only.
    assert_eq!(RolloutCause::Restart.for_worker(0, 1), RolloutCause::RestartChanged);
    assert_eq!(RolloutCause::Restart.for_worker(1, 1), RolloutCause::Restart);
    assert_eq!(RolloutCause::Changed.for_worker(0, 2), RolloutCause::Changed);
    assert_eq!(RolloutCause::Touched.for_worker(0, 1), RolloutCause::Touched);
}

#[test]
fn restart_interval_with_jitter_and_min_lifetime() {
    let t0 = Instant::now();
    let s = sup(|s| {
        s.restart_interval = Some(secs(60));
        s.restart_interval_jitter = secs(5);
    });
    let mut spread = Spread::new(7);
    for _ in 0..50 {
        let end = lifetime_end(&s, t0, &mut spread).expect("an end");
        assert!(end >= t0 + secs(60) && end <= t0 + secs(65));
    }
    assert_eq!(lifetime_end(&Supervision::default(), t0, &mut spread), None);
    let w = Sampled { ready_at: Some(t0), lifetime_end: Some(t0 + secs(60)), ..Default::default() };
    assert_eq!(round_verdict(&s, &w, t0 + secs(59)), Verdict::Keep);
    let v = round_verdict(&s, &w, t0 + secs(60));
    assert_eq!(v, Verdict::Interval { lived: secs(60) });
    assert!(v.recycle().is_some_and(|r| !r.urgent));
    // min-lifetime longer than the interval holds it back.
    let held = sup(|x| {
        *x = s.clone();
        x.min_lifetime = secs(90);
    });
    assert_eq!(round_verdict(&held, &w, t0 + secs(60)), Verdict::Keep);
    assert!(matches!(round_verdict(&held, &w, t0 + secs(90)), Verdict::Interval { .. }));
}

#[test]
fn memory_limit_recycles_urgently_after_min_lifetime() {
    let t0 = Instant::now();
    let s = sup(|s| {
        s.memory_limit = Some(100 << 20);
        s.min_lifetime = secs(10);
    });
    let mut w = Sampled { ready_at: Some(t0), rss: Some(101 << 20), ..Default::default() };
    assert_eq!(round_verdict(&s, &w, t0 + secs(1)), Verdict::MemoryLater { rss: 101 << 20, limit: 100 << 20 });
    w.memory_warned = true;
    assert_eq!(round_verdict(&s, &w, t0 + secs(2)), Verdict::Keep, "warned once");
    let v = round_verdict(&s, &w, t0 + secs(10));
    assert_eq!(v, Verdict::Memory { rss: 101 << 20, limit: 100 << 20 });
    let r = v.recycle().expect("recycled");
    assert!(r.urgent && !r.hard);
    assert_eq!(r.reason, "memory-limit (RSS 101MiB > 100MiB)");
    w.rss = Some(100 << 20);
    assert_eq!(round_verdict(&s, &w, t0 + secs(10)), Verdict::Keep, "at the limit is within it");
}

#[test]
fn cpu_time_limit_recycles_regardless_of_min_lifetime() {
    let t0 = Instant::now();
    let s = sup(|s| {
        s.cpu_time_limit = Some(secs(60));
        s.min_lifetime = secs(3600);
    });
    let w = Sampled { ready_at: Some(t0), cpu: Some(secs(59)), ..Default::default() };
    assert_eq!(round_verdict(&s, &w, t0 + secs(1)), Verdict::Keep);
    let w = Sampled { cpu: Some(secs(60)), ..w };
    let v = round_verdict(&s, &w, t0 + secs(1));
    assert_eq!(v, Verdict::Cpu { used: secs(60), limit: secs(60) });
    assert!(v.recycle().is_some_and(|r| r.urgent && r.reason == "cpu-time-limit (60.0s of CPU)"));
    // What it used, not cut to whole seconds (2.9 s is not "2s").
    let w = Sampled { cpu: Some(Duration::from_millis(60_900)), ..w };
    assert!(round_verdict(&s, &w, t0 + secs(1)).recycle().is_some_and(|r| r.reason == "cpu-time-limit (60.9s of CPU)"));
}

#[test]
fn replacements_roll_and_the_last_worker_keeps_serving() {
    let t0 = Instant::now();
    // 4 workers all due for a calm recycle: start one replacement (max(1, 4/4)), retire none yet.
    let due: Vec<Member> = (0..4).map(|i| ready(i, t0, Some(false))).collect();
    assert_eq!(plan(&roster(Mode::Static, 4, due.clone()), t0), vec![Action::Spawn(1)]);
    // Once a fifth is ready, the oldest due goes, and the next replacement starts.
    let mut five = due.clone();
    five.push(ready(9, t0, None));
    assert_eq!(plan(&roster(Mode::Static, 4, five), t0), vec![Action::Retire(0), Action::Spawn(1)]);
    // An urgent one goes at once while another serves, before the older calm ones.
    let mut mixed = due;
    mixed[2].recycle_urgent = Some(true);
    assert_eq!(plan(&roster(Mode::Static, 4, mixed), t0), vec![Action::Retire(2), Action::Spawn(1)]);
    // The only worker, urgent: it keeps serving until its replacement is ready.
    let alone = vec![ready(0, t0, Some(true))];
    assert_eq!(plan(&roster(Mode::Static, 1, alone), t0), vec![Action::Spawn(1)]);
}

#[test]
fn a_smaller_static_pool_retires_its_idlest_workers() {
    let t0 = Instant::now();
    let members: Vec<Member> =
        (0..4).map(|i| Member { busy: [3, 0, 2, 1][i as usize], ..ready(i, t0, None) }).collect();
    assert_eq!(
        plan(&roster(Mode::Static, 2, members.clone()), t0),
        vec![Action::Shrink { id: 1, want: 2 }, Action::Shrink { id: 3, want: 2 }]
    );
    assert_eq!(plan(&roster(Mode::Dynamic, 2, members), t0), vec![], "dynamic pools shrink by idle-timeout");
}

#[test]
fn draining_workers_finish_dump_their_stacks_then_die() {
    let t0 = Instant::now();
    let deadline = t0 + secs(30);
    assert_eq!(drain_step((0, false), deadline, false, true, t0), DrainStep::Finish);
    assert_eq!(drain_step((2, false), deadline, false, true, t0 + secs(29)), DrainStep::Wait);
    assert!(
        matches!(drain_step((2, false), deadline, false, true, deadline), DrainStep::DumpStacks { until } if until > deadline)
    );
    assert_eq!(drain_step((2, false), deadline, true, true, deadline), DrainStep::Kill);
    assert_eq!(
        drain_step((2, false), deadline, false, false, deadline),
        DrainStep::Kill,
        "no stacks from a command worker"
    );
}

#[test]
fn a_draining_direct_worker_is_waited_for_until_it_exits_or_its_deadline() {
    let t0 = Instant::now();
    let deadline = t0 + secs(30);
    // Idle, it exits by itself once it has seen its drain word: no SIGTERM meanwhile.
    assert_eq!(drain_step((0, true), deadline, false, true, t0), DrainStep::Wait);
    assert_eq!(drain_step((3, true), deadline, false, true, t0 + secs(29)), DrainStep::Wait);
    assert!(matches!(drain_step((0, true), deadline, false, true, deadline), DrainStep::DumpStacks { .. }));
    assert_eq!(drain_step((0, true), deadline, true, true, deadline), DrainStep::Kill);
}

#[test]
fn sizing_targets_by_mode() {
    let dynamic = sup(|s| {
        s.mode = Mode::Dynamic;
        s.min_processes = 1;
        s.spare_processes = 3;
    });
    assert_eq!(initial_target(&dynamic, 8), 3);
    assert_eq!(initial_target(&dynamic, 2), 2);
    assert_eq!(initial_target(&sup(|s| s.mode = Mode::OnDemand), 8), 0);
    assert_eq!(initial_target(&Supervision::default(), 8), 8);
    assert_eq!(want(&dynamic, 8, 0), 1);
    assert_eq!(want(&dynamic, 8, 20), 8);
    assert_eq!(want(&Supervision::default(), 8, 0), 8);
    assert_eq!(tick_period(None), ROUND);
    assert_eq!(tick_period(Some(secs(2))), Duration::from_millis(500));
    assert_eq!(tick_period(Some(Duration::from_millis(100))), Duration::from_millis(100));
}
