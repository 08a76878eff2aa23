//! The pure core of `BackgroundJobSchedule`: parsing a cron schedule in its time zone, and
//! deciding from the last scheduled time and `now` which scheduled time to run, as the
//! Kubernetes CronJob controller does. Time is always an argument.

use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};
use k8s_openapi::jiff::{SignedDuration, Timestamp, Zoned, tz::TimeZone};

/// Longest schedule name: job names are at most 52 characters (crate::api::crd::MAX_NAME_LENGTH)
/// and the suffix takes 11 ("-" and up to 10 digits).
pub const MAX_SCHEDULE_NAME_LENGTH: usize = 41;

/// `Tick::missed` stops counting here, so a schedule down for years costs no CPU: this value
/// means "this many or more" (CronJob warns of too many missed start times above 100).
pub const MISSED_COUNT_LIMIT: u32 = 101;

const ALLOWED: &str =
    "use 5 fields (minute hour day-of-month month day-of-week) or @hourly, @daily, @weekly, @monthly, @yearly";

/// A parsed schedule: the cron pattern and its time zone (UTC when none).
#[derive(Debug, Clone)]
pub struct Cadence {
    cron: Cron,
    zone: TimeZone,
}

impl Cadence {
    /// Parses spec.schedule and spec.timeZone; every refusal names the field and what is allowed.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Cadence, String> {
        let refuse = |why: &str| {
            let why = why.trim_end_matches('.');
            format!("spec.schedule: {schedule:?} is not a cron schedule: {why}; {ALLOWED}")
        };
        // CronJob refuses TZ=/CRON_TZ= too: one place for the zone. No valid pattern holds "TZ".
        if schedule.to_ascii_uppercase().contains("TZ") {
            return Err(format!(
                "spec.schedule: {schedule:?} names a time zone; put it in spec.timeZone (like Europe/Berlin) and keep the schedule to {}",
                &ALLOWED[4..]
            ));
        }
        // Kubernetes (robfig/cron) knows @midnight; croner does not.
        let pattern = if schedule.trim().eq_ignore_ascii_case("@midnight") { "@daily" } else { schedule };
        // No seconds field (CronJob has none) and no year field.
        let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build();
        let cron = parser.parse(pattern).map_err(|e| refuse(&e.to_string()))?;
        let zone = match time_zone {
            None => TimeZone::UTC,
            Some(name) => k8s_openapi::jiff::tz::db().get(name).map_err(|_| {
                format!("spec.timeZone: {name:?} is not a time zone of the IANA database (like Europe/Berlin or America/New_York)")
            })?,
        };
        let cadence = Cadence { cron, zone };
        // A pattern that names no real date ("0 0 31 2 *") would never run: refuse it now rather
        // than leave a schedule that silently does nothing.
        if cadence.next_after(Timestamp::UNIX_EPOCH).is_none() {
            return Err(refuse("it matches no date"));
        }
        Ok(cadence)
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let z = t.to_zoned(self.zone.clone());
        self.cron.find_next_occurrence(&z, false).ok().map(|z| z.timestamp())
    }

    /// The scheduled time at or before `z` (inclusive) or strictly before it.
    fn previous(&self, z: &Zoned, inclusive: bool) -> Option<Zoned> {
        self.cron.find_previous_occurrence(z, inclusive).ok()
    }
}

/// What a schedule should do now (Kubernetes CronJob controller's `mostRecentScheduleTime`
/// semantics, pkg/controller/cronjob/utils.go).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// The scheduled time to start a job for now, if any: the most recent scheduled time in
    /// (since, now], where since = last scheduled time, else the schedule's creation time; with a
    /// starting deadline, only if now - run <= deadline.
    pub run: Option<Timestamp>,
    /// Scheduled times in (since, now] that were passed over (not run), at most
    /// [`MISSED_COUNT_LIMIT`].
    pub missed: u32,
    /// The next scheduled time strictly after now (when to look again).
    pub next: Option<Timestamp>,
}

/// `last_scheduled`: status.lastScheduleTime; `created`: the schedule's creationTimestamp;
/// `starting_deadline_seconds`: spec.startingDeadlineSeconds. When a deadline is set, times
/// before now - deadline are not even considered (as CronJob does: it moves `since` forward).
pub fn tick(
    cadence: &Cadence,
    last_scheduled: Option<Timestamp>,
    created: Timestamp,
    starting_deadline_seconds: Option<i64>,
    now: Timestamp,
) -> Tick {
    let since = last_scheduled.unwrap_or(created);
    // A negative deadline (the CRD refuses it) counts as 0; one too large to subtract as none.
    let cutoff = starting_deadline_seconds.and_then(|s| now.checked_sub(SignedDuration::from_secs(s.max(0))).ok());
    let considered = |t: &Timestamp| *t > since && cutoff.is_none_or(|c| *t >= c);
    // Walk back from now, not forward from `since`: a schedule down for years costs at most
    // MISSED_COUNT_LIMIT searches. Each search starts from the exact value the last returned,
    // which keeps croner on the right pass of a repeated (fall-back) hour.
    let mut at = cadence.previous(&now.to_zoned(cadence.zone.clone()), true);
    let run = at.as_ref().map(Zoned::timestamp).filter(considered);
    let mut missed = 0;
    while run.is_some() && missed < MISSED_COUNT_LIMIT {
        at = at.and_then(|z| cadence.previous(&z, false));
        match at.as_ref().map(Zoned::timestamp) {
            Some(t) if considered(&t) => missed += 1,
            _ => break,
        }
    }
    Tick { run, missed, next: cadence.next_after(now) }
}

/// The job's name for the run scheduled at `t`: "<schedule>-<minutes since the Unix epoch>", as
/// CronJob names its Jobs, so one scheduled time never yields two jobs (a second create is
/// refused as AlreadyExists), across restarts and replicas.
pub fn job_name(schedule: &str, t: Timestamp) -> String {
    // Go's `t.Unix() / 60`, truncating as CronJob's getTimeHashInMinutes does.
    format!("{schedule}-{}", t.as_second() / 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cad(schedule: &str, zone: Option<&str>) -> Cadence {
        Cadence::parse(schedule, zone).unwrap()
    }

    /// Wakes like the controller at each of `wakes`, applying every run; returns the runs.
    fn drive(c: &Cadence, created: Timestamp, wakes: impl IntoIterator<Item = Timestamp>) -> Vec<Timestamp> {
        let mut runs: Vec<Timestamp> = vec![];
        for now in wakes {
            runs.extend(tick(c, runs.last().copied(), created, None, now).run);
        }
        runs
    }

    /// Every minute from `from` for `minutes` minutes, at second 7.
    fn minutes(from: &str, minutes: i64) -> impl Iterator<Item = Timestamp> {
        let from = ts(from);
        (0..minutes).map(move |m| from + SignedDuration::from_secs(m * 60 + 7))
    }

    /// The schedule's times in (from, to], walked forward with `next_after`.
    fn times(c: &Cadence, from: Timestamp, to: Timestamp) -> Vec<Timestamp> {
        std::iter::successors(c.next_after(from), |t| c.next_after(*t)).take_while(|t| *t <= to).collect()
    }

    #[test]
    fn examples() {
        let every = cad("* * * * *", None);
        assert_eq!(every.next_after(ts("2025-01-01T10:00:00Z")), Some(ts("2025-01-01T10:01:00Z")));
        assert_eq!(every.next_after(ts("2025-01-01T10:00:30.5Z")), Some(ts("2025-01-01T10:01:00Z")));
        let hourly = cad("@hourly", None);
        assert_eq!(hourly.next_after(ts("2025-01-01T10:00:00Z")), Some(ts("2025-01-01T11:00:00Z")));
        assert_eq!(cad("@midnight", None).next_after(ts("2025-01-01T10:00:00Z")), Some(ts("2025-01-02T00:00:00Z")));
        // 02:30 in Berlin is 01:30 UTC in winter (CET) and 00:30 UTC in summer (CEST).
        let berlin = cad("30 2 * * *", Some("Europe/Berlin"));
        assert_eq!(berlin.next_after(ts("2025-01-15T00:00:00Z")), Some(ts("2025-01-15T01:30:00Z")));
        assert_eq!(berlin.next_after(ts("2025-07-15T00:00:00Z")), Some(ts("2025-07-15T00:30:00Z")));
        assert_eq!(job_name("nightly", ts("2025-01-01T10:00:00Z")), "nightly-28928760");
        // The last second jiff knows still fits 10 digits.
        let longest = job_name(&"n".repeat(MAX_SCHEDULE_NAME_LENGTH), Timestamp::MAX);
        assert_eq!(longest.len(), crate::api::crd::MAX_NAME_LENGTH);
    }

    #[test]
    fn refusals_name_the_field() {
        for bad in
            ["61 * * * *", "0 * * * * *", "TZ=UTC * * * * *", "CRON_TZ=UTC 0 * * * *", "", "0 0 31 2 *", "@every 5m"]
        {
            let e = Cadence::parse(bad, None).unwrap_err();
            assert!(e.starts_with("spec.schedule: ") && e.contains("@hourly"), "{e}");
        }
        let e = Cadence::parse("61 * * * *", None).unwrap_err();
        assert!(
            e.contains("\"61 * * * *\" is not a cron schedule: Component error: Number out of bounds; use 5 fields"),
            "{e}"
        );
        for bad in ["Mars/Olympus", "", "Local"] {
            let e = Cadence::parse("@daily", Some(bad)).unwrap_err();
            assert!(e.starts_with("spec.timeZone: ") && e.contains("IANA"), "{e}");
        }
    }

    #[test]
    fn cronjob_catch_up_and_deadline() {
        let hourly = cad("@hourly", None);
        let created = ts("2025-01-01T09:30:00Z");
        let last = Some(ts("2025-01-01T10:00:00Z"));
        // Down from 10:05 to 13:10: 11:00 and 12:00 are missed, 13:00 is run late.
        let t = tick(&hourly, last, created, None, ts("2025-01-01T13:10:00Z"));
        assert_eq!(
            t,
            Tick { run: Some(ts("2025-01-01T13:00:00Z")), missed: 2, next: Some(ts("2025-01-01T14:00:00Z")) }
        );
        // 13:00 is 20 minutes old, past a 600 s deadline: nothing in the window is considered.
        let t = tick(&hourly, last, created, Some(600), ts("2025-01-01T13:20:00Z"));
        assert_eq!((t.run, t.missed), (None, 0));
        // Within the deadline it still runs; nothing before `created` counts.
        let t = tick(&hourly, None, created, Some(600), ts("2025-01-01T10:09:00Z"));
        assert_eq!((t.run, t.missed), (Some(ts("2025-01-01T10:00:00Z")), 0));
        // Years down: the count stops at the limit.
        let t = tick(&cad("* * * * *", None), last, created, None, ts("2030-01-01T00:00:00Z"));
        assert_eq!((t.run, t.missed), (Some(ts("2030-01-01T00:00:00Z")), MISSED_COUNT_LIMIT));
    }

    // What croner does (README "DST handling", observed here): a fixed-time job whose time falls
    // in a spring-forward gap runs once, at the first minute after the gap; in a fall-back
    // overlap it runs once, on the first pass. Wildcard/step jobs run on every real occurrence
    // of their wall clock time, so twice in a repeated hour.
    #[test]
    fn dst_in_new_york() {
        let ny = Some("America/New_York");
        // 2025-03-09: 02:00 EST jumps to 03:00 EDT, so 02:30 runs at 03:00 EDT (07:00 UTC).
        let spring =
            drive(&cad("30 2 * * *", ny), ts("2025-03-09T04:00:00Z"), minutes("2025-03-09T04:00:00Z", 24 * 60));
        assert_eq!(spring, [ts("2025-03-09T07:00:00Z")]);
        // 2025-11-02: 02:00 EDT falls back to 01:00 EST; 01:30 runs once, at 01:30 EDT.
        let fall = drive(&cad("30 1 * * *", ny), ts("2025-11-02T04:00:00Z"), minutes("2025-11-02T04:00:00Z", 24 * 60));
        assert_eq!(fall, [ts("2025-11-02T05:30:00Z")]);
        // Every 15 minutes through both 1 o'clock hours (05:00-06:59 UTC): 8 runs, 15 minutes apart.
        let quarter = drive(&cad("*/15 * * * *", ny), ts("2025-11-02T04:59:00Z"), minutes("2025-11-02T04:59:00Z", 120));
        assert_eq!(quarter, times(&cad("*/15 * * * *", None), ts("2025-11-02T04:59:00Z"), ts("2025-11-02T06:59:00Z")));
        assert_eq!(quarter.len(), 8);
    }

    fn schedule() -> impl Strategy<Value = String> {
        // Hours 0-3 often: that is where the DST transitions are.
        let hour = prop_oneof![0..4u32, 0..24u32];
        prop_oneof![
            (0..60u32, hour).prop_map(|(m, h)| format!("{m} {h} * * *")),
            (1..=30u32).prop_map(|k| format!("*/{k} * * * *")),
            (0..30u32).prop_map(|m| format!("{m},{} * * * *", m + 30)),
            (0..60u32, proptest::sample::subsequence((0..7).collect::<Vec<u32>>(), 1..=3)).prop_map(|(m, d)| {
                format!("{m} * * * {}", d.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
            }),
            Just("@hourly".to_string()),
        ]
    }

    fn start() -> impl Strategy<Value = Timestamp> {
        // The 2025 transitions of the zones below (UTC), or anywhere in 2025.
        let transitions = [
            "2025-03-09T07:00:00Z",
            "2025-03-30T01:00:00Z",
            "2025-04-05T15:00:00Z",
            "2025-10-04T15:30:00Z",
            "2025-10-26T01:00:00Z",
            "2025-11-02T06:00:00Z",
        ];
        prop_oneof![
            (proptest::sample::select(transitions.to_vec()), 0..6 * 3600i64)
                .prop_map(|(t, back)| ts(t) - SignedDuration::from_secs(back)),
            (0..365 * 86400i64).prop_map(|s| ts("2025-01-01T00:00:00Z") + SignedDuration::from_secs(s)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn no_missed_or_doubled_run(
            schedule in schedule(),
            zone in proptest::sample::select(vec!["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]),
            created in start(),
            gaps in proptest::collection::vec(prop_oneof![12 => 1..=90i64, 1 => 3600..4 * 3600i64], 50..300),
        ) {
            let c = cad(&schedule, Some(zone));
            let (mut last, mut prev, mut runs) = (None, created, vec![]);
            for gap in &gaps {
                let now = prev + SignedDuration::from_secs(*gap);
                let t = tick(&c, last, created, None, now);
                // (1) never the same time twice, never one at or before the last run.
                if let Some(run) = t.run {
                    prop_assert!(last.is_none_or(|l| run > l) && run <= now);
                    last = Some(run);
                    runs.push(run);
                }
                // (2) what came due since the last wake is run (the latest) or counted as missed.
                let due = times(&c, prev, now);
                prop_assert_eq!(t.run, due.last().copied(), "due {:?}", due);
                prop_assert_eq!(t.missed as usize, due.len().saturating_sub(1).min(MISSED_COUNT_LIMIT as usize));
                // (3) when to look again.
                prop_assert!(t.next.is_some_and(|n| n > now));
                prop_assert_eq!(t.next, c.next_after(now));
                prev = now;
            }
            let expected = times(&c, created, prev);
            let spacing = expected.windows(2).map(|w| w[1].as_second() - w[0].as_second()).min().unwrap_or(i64::MAX);
            if gaps.iter().all(|g| *g < spacing) {
                prop_assert_eq!(runs, expected);
            }
        }
    }
}
