//! What the relay's circuits may send and receive: a token bucket per direction shared by all
//! of them (`bandwidth_rate`, `bandwidth_burst`: Tor's `RelayBandwidthRate` and
//! `RelayBandwidthBurst`), and an allowance per accounting period (`accounting_max`: Tor's
//! `AccountingMax`). Near the end of the allowance the relay hibernates softly: it refuses new
//! circuits and publishes its descriptor marked HIBERNATING, so that clients leave it out of
//! their views; once the allowance is spent it carries nothing more. Both end when the period
//! turns.
//!
//! Counted and limited: the bytes of circuit links (cells, both ways) and of exit connections
//! (both ways). Not counted: the DHT, directory syncs and libp2p's own framing, which are small
//! beside the circuits and which the relay needs to stay findable.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

/// The smallest `bandwidth_rate` accepted: Tor's minimum for a relay (75 KBytes a second);
/// below it a relay slows every circuit through it more than it helps.
pub const MIN_BANDWIDTH_RATE: u64 = 75 * 1024;
/// The share of `accounting_max` left when soft hibernation begins (Tor's 5 %) ...
pub const SOFT_HIBERNATION_SHARE: f64 = 0.05;
/// ... but never more than this many bytes (Tor's 500 MBytes).
pub const SOFT_HIBERNATION_MAX_BYTES: u64 = 500 * 1024 * 1024;
/// How often the relay saves its accounting state and looks at the clock for the period's
/// end: a crash loses at most this much counting, and a clock that jumps is followed within it.
pub const ACCOUNTING_SAVE_INTERVAL: Duration = Duration::from_secs(60);
/// The accounting state file in the data directory.
pub const ACCOUNTING_STATE_FILE: &str = "accounting.state";
/// An accounting state file larger than this is not one (bounds what a corrupt file costs).
const MAX_ACCOUNTING_STATE_LEN: u64 = 1024;

/// A number of bytes as an operator writes it, in Tor's units: `"1 MB"`, `"500 KBytes"`,
/// `"2.5 GB"`, `"8 Mbits"`, or a bare integer of bytes. As in Tor, K, M, G and T are powers of
/// 1024 and bits are an eighth of a byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteCount(pub u64);

impl ByteCount {
    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteCount {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("`{s}` does not start with a number"))?;
        let unit = unit.trim().to_ascii_lowercase();
        let multiplier: u64 = match unit.as_str() {
            "" | "b" | "byte" | "bytes" => 1,
            "kb" | "kbyte" | "kbytes" | "kilobyte" | "kilobytes" | "kib" | "kibibyte"
            | "kibibytes" => 1 << 10,
            "mb" | "mbyte" | "mbytes" | "megabyte" | "megabytes" | "mib" | "mebibyte"
            | "mebibytes" => 1 << 20,
            "gb" | "gbyte" | "gbytes" | "gigabyte" | "gigabytes" | "gib" | "gibibyte"
            | "gibibytes" => 1 << 30,
            "tb" | "tbyte" | "tbytes" | "terabyte" | "terabytes" | "tib" | "tebibyte"
            | "tebibytes" => 1 << 40,
            "kbit" | "kbits" | "kilobit" | "kilobits" => 1 << 7,
            "mbit" | "mbits" | "megabit" | "megabits" => 1 << 17,
            "gbit" | "gbits" | "gigabit" | "gigabits" => 1 << 27,
            "tbit" | "tbits" | "terabit" | "terabits" => 1 << 37,
            other => {
                return Err(format!(
                    "unknown unit `{other}` in `{s}` (bytes, KB, MB, GB, TB, or Kbits … Tbits)"
                ));
            }
        };
        let bytes = number * multiplier as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(format!("`{s}` is too large"));
        }
        Ok(Self(bytes.round() as u64))
    }
}

impl fmt::Display for ByteCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

impl Serialize for ByteCount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(u64),
            Text(String),
        }
        match Written::deserialize(d)? {
            Written::Number(n) => Ok(Self(n)),
            Written::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// How long an accounting period lasts. Periods start at 00:00 UTC: each day, each Monday,
/// or the first of each month (Tor's `AccountingStart day|week|month` at its default time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountingPeriod {
    /// From 00:00 UTC to the next.
    Day,
    /// From Monday 00:00 UTC to the next.
    Week,
    /// From the first of the month, 00:00 UTC, to the next (Tor's default).
    #[default]
    Month,
}

impl AccountingPeriod {
    /// The period holding `now` (UNIX seconds), as `[start, end)`.
    pub fn bounds(self, now: u64) -> (u64, u64) {
        const DAY: u64 = 86_400;
        let day = now / DAY;
        match self {
            Self::Day => (day * DAY, (day + 1) * DAY),
            Self::Week => {
                // 1970-01-01 was a Thursday: day 0 is three days after a Monday (the first
                // week is cut at the epoch).
                let since_monday = (day + 3) % 7;
                (
                    day.saturating_sub(since_monday) * DAY,
                    (day + 7 - since_monday) * DAY,
                )
            }
            Self::Month => {
                let (year, month) = year_month_of_day(day);
                let (next_year, next_month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                (
                    first_day_of_month(year, month) * DAY,
                    first_day_of_month(next_year, next_month) * DAY,
                )
            }
        }
    }
}

/// The civil year and month of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn year_month_of_day(day: u64) -> (u64, u64) {
    let z = day + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month)
}

/// The day (from 1970-01-01) of the first of `month` in `year` (Hinnant's `days_from_civil`).
fn first_day_of_month(year: u64, month: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let yoe = year - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Which bytes count against `accounting_max` (Tor's `AccountingRule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountingRule {
    /// The larger of the bytes received and the bytes sent (Tor's default).
    #[default]
    Max,
    /// Received and sent together.
    Sum,
    /// Received only.
    In,
    /// Sent only.
    Out,
}

/// A token bucket in bytes: `rate` a second, at most `burst` saved up. A take larger than what
/// is there goes into debt, and the taker waits until the debt is paid back; with many takers
/// at once, each waits for all the debt before it, so together they get `rate`.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub(crate) fn new(rate: u64, burst: u64, now: Instant) -> Self {
        Self {
            rate: rate as f64,
            burst: burst as f64,
            state: Mutex::new((burst as f64, now)),
        }
    }

    /// Takes `n` bytes at `now`; how long the taker must wait before it goes on.
    pub(crate) fn take(&self, n: usize, now: Instant) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, at) = &mut *state;
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *tokens = (*tokens + elapsed * self.rate).min(self.burst) - n as f64;
        *at = now.max(*at);
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / self.rate)
        }
    }
}

/// Where the relay stands in its accounting period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hibernation {
    /// Carrying traffic and accepting circuits.
    Awake,
    /// Near the end of the allowance: no new circuits, the descriptor marked.
    Soft,
    /// The allowance is spent: nothing more is carried until the period turns.
    Hard,
}

/// An accounting period's counts, without IO or clocks: told the time, it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accounting {
    max: u64,
    period: AccountingPeriod,
    rule: AccountingRule,
    start: u64,
    end: u64,
    read: u64,
    written: u64,
}

impl Accounting {
    pub(crate) fn new(max: u64, period: AccountingPeriod, rule: AccountingRule, now: u64) -> Self {
        let (start, end) = period.bounds(now);
        Self {
            max,
            period,
            rule,
            start,
            end,
            read: 0,
            written: 0,
        }
    }

    /// The bytes counted against the allowance.
    pub(crate) fn used(&self) -> u64 {
        match self.rule {
            AccountingRule::Max => self.read.max(self.written),
            AccountingRule::Sum => self.read.saturating_add(self.written),
            AccountingRule::In => self.read,
            AccountingRule::Out => self.written,
        }
    }

    /// When this period ends (UNIX seconds).
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    pub(crate) fn hibernation(&self) -> Hibernation {
        let margin =
            ((self.max as f64 * SOFT_HIBERNATION_SHARE) as u64).min(SOFT_HIBERNATION_MAX_BYTES);
        let used = self.used();
        if used >= self.max {
            Hibernation::Hard
        } else if used >= self.max - margin {
            Hibernation::Soft
        } else {
            Hibernation::Awake
        }
    }

    pub(crate) fn add(&mut self, read: u64, written: u64) {
        self.read = self.read.saturating_add(read);
        self.written = self.written.saturating_add(written);
    }

    /// Starts a new period if `now` is past this one's end (or before its start: a clock set
    /// back by more than a period); whether it did.
    pub(crate) fn turn(&mut self, now: u64) -> bool {
        if (self.start..self.end).contains(&now) {
            return false;
        }
        *self = Self::new(self.max, self.period, self.rule, now);
        true
    }

    /// The state file's text.
    pub(crate) fn to_text(&self) -> String {
        format!(
            "shallot-accounting 1\nperiod_start {}\nread {}\nwritten {}\n",
            self.start, self.read, self.written
        )
    }

    /// Takes the counts of a state file written in this same period; another period's counts,
    /// or a file that does not parse, are left out (`Err` says why).
    pub(crate) fn restore(&mut self, text: &str) -> Result<(), &'static str> {
        let mut lines = text.lines();
        if lines.next() != Some("shallot-accounting 1") {
            return Err("not an accounting state file of this version");
        }
        let mut field = |name: &str| -> Result<u64, &'static str> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .ok_or("malformed")
        };
        let start = field("period_start ")?;
        let read = field("read ")?;
        let written = field("written ")?;
        if start != self.start {
            return Err("from another period");
        }
        self.read = read;
        self.written = written;
        Ok(())
    }
}

/// The relay's shared limits and counts of circuit traffic.
#[derive(Debug)]
pub(crate) struct Traffic {
    read_bucket: Option<TokenBucket>,
    write_bucket: Option<TokenBucket>,
    accounting: Option<Mutex<Accounting>>,
    hibernation: watch::Sender<Hibernation>,
    read_total: AtomicU64,
    written_total: AtomicU64,
}

impl Traffic {
    /// Limits at `rate` bytes a second each way with `burst` saved up, if set, and an
    /// accounting period, if set.
    pub(crate) fn new(rate_and_burst: Option<(u64, u64)>, accounting: Option<Accounting>) -> Self {
        let now = Instant::now();
        let bucket = |(rate, burst)| TokenBucket::new(rate, burst, now);
        let state = accounting
            .as_ref()
            .map_or(Hibernation::Awake, Accounting::hibernation);
        Self {
            read_bucket: rate_and_burst.map(bucket),
            write_bucket: rate_and_burst.map(bucket),
            accounting: accounting.map(Mutex::new),
            hibernation: watch::Sender::new(state),
            read_total: AtomicU64::new(0),
            written_total: AtomicU64::new(0),
        }
    }

    /// Counts `n` bytes just received and waits as the limits say.
    pub(crate) async fn received(&self, n: usize) {
        self.read_total.fetch_add(n as u64, Ordering::Relaxed);
        self.account(n as u64, 0);
        self.pace(self.read_bucket.as_ref(), n).await;
    }

    /// Counts `n` bytes about to be sent and waits as the limits say.
    pub(crate) async fn sending(&self, n: usize) {
        self.written_total.fetch_add(n as u64, Ordering::Relaxed);
        self.account(0, n as u64);
        self.pace(self.write_bucket.as_ref(), n).await;
    }

    async fn pace(&self, bucket: Option<&TokenBucket>, n: usize) {
        if let Some(bucket) = bucket {
            let wait = bucket.take(n, Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        // Only accounting hibernates: an unaccounted relay skips the watch's lock on every run.
        if self.accounting.is_some() && *self.hibernation.borrow() == Hibernation::Hard {
            let mut awake = self.hibernation.subscribe();
            let _ = awake.wait_for(|h| *h != Hibernation::Hard).await;
        }
    }

    fn account(&self, read: u64, written: u64) {
        let Some(accounting) = &self.accounting else {
            return;
        };
        let mut a = accounting.lock().unwrap_or_else(PoisonError::into_inner);
        a.add(read, written);
        let now = a.hibernation();
        self.hibernation.send_if_modified(|h| {
            if *h == now {
                return false;
            }
            match now {
                Hibernation::Soft => warn!(
                    used = a.used(),
                    max = a.max,
                    until = a.end(),
                    "accounting: the period's allowance is nearly spent; hibernating: \
                     refusing new circuits and publishing the descriptor marked hibernating \
                     until the period ends"
                ),
                Hibernation::Hard => warn!(
                    used = a.used(),
                    until = a.end(),
                    "accounting: the period's allowance is spent; carrying no traffic until \
                     the period ends"
                ),
                Hibernation::Awake => {}
            }
            *h = now;
            true
        });
    }

    /// Where the relay stands.
    pub(crate) fn hibernation(&self) -> Hibernation {
        *self.hibernation.borrow()
    }

    /// Changes of [`Traffic::hibernation`].
    pub(crate) fn watch_hibernation(&self) -> watch::Receiver<Hibernation> {
        self.hibernation.subscribe()
    }

    /// Bytes of circuit traffic received and sent since the relay started.
    pub(crate) fn totals(&self) -> (u64, u64) {
        (
            self.read_total.load(Ordering::Relaxed),
            self.written_total.load(Ordering::Relaxed),
        )
    }

    /// Starts a new period if `now` (UNIX seconds) is past this one; the state file's text
    /// (`None` without accounting) and how long until the period ends.
    pub(crate) fn tick(&self, now: u64) -> Option<(String, Duration)> {
        let accounting = self.accounting.as_ref()?;
        let mut a = accounting.lock().unwrap_or_else(PoisonError::into_inner);
        if a.turn(now) {
            let state = a.hibernation();
            self.hibernation.send_if_modified(|h| {
                let changed = *h != state;
                if changed && state == Hibernation::Awake {
                    info!("accounting: a new period began; accepting circuits again");
                }
                *h = state;
                changed
            });
        }
        Some((
            a.to_text(),
            Duration::from_secs(a.end().saturating_sub(now)),
        ))
    }
}

/// Reads the accounting state file of `dir` into `accounting` if it holds this period's counts;
/// a missing file is a first start, anything else unusable is said in the log.
pub(crate) fn restore_accounting(dir: &std::path::Path, accounting: &mut Accounting) {
    use std::io::Read;
    let path = dir.join(ACCOUNTING_STATE_FILE);
    let mut text = String::new();
    let read = std::fs::File::open(&path).and_then(|f| {
        f.take(MAX_ACCOUNTING_STATE_LEN)
            .read_to_string(&mut text)
            .map(|_| ())
    });
    match read {
        Ok(()) => match accounting.restore(&text) {
            Ok(()) => info!(
                used = accounting.used(),
                "accounting: resumed this period's counts"
            ),
            Err("from another period") => {}
            Err(why) => warn!(path = %path.display(), why, "accounting: state file left unused"),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(path = %path.display(), error = %e, "accounting: cannot read the state file")
        }
    }
}

/// Saves the accounting state every [`ACCOUNTING_SAVE_INTERVAL`] and turns the period when it
/// ends, by the node's wall clock. Runs until aborted; does nothing without accounting.
pub(crate) async fn accounting_loop(
    traffic: std::sync::Arc<Traffic>,
    clock: shallot_directory::WallClock,
    dir: std::path::PathBuf,
) {
    let path = dir.join(ACCOUNTING_STATE_FILE);
    loop {
        let Some((text, until_end)) = traffic.tick(clock.now()) else {
            return;
        };
        if let Err(e) = crate::keys::write_private(&path, text.as_bytes()) {
            warn!(path = %path.display(), error = %e, "accounting: cannot save the state file");
        }
        // One second past the end, so that the clock reads the new period.
        let wait = (until_end + Duration::from_secs(1)).min(ACCOUNTING_SAVE_INTERVAL);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn byte_counts_read_as_tor_reads_them() {
        let cases = [
            ("1 MB", MIB),
            ("1MB", MIB),
            ("1 MBytes", MIB),
            ("500 KBytes", 500 * 1024),
            ("2.5 GB", 5 * (1 << 29)),
            ("8 Mbits", MIB),
            ("100 kbits", 100 * 128),
            ("1 TB", 1 << 40),
            ("4096", 4096),
            ("12 bytes", 12),
            ("1 mib", MIB),
        ];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<ByteCount>(), Ok(ByteCount(bytes)), "{text}");
        }
        for bad in ["", "MB", "1 parsec", "-1 MB", "1e400 TB", "1..2 MB"] {
            assert!(bad.parse::<ByteCount>().is_err(), "{bad}");
        }
    }

    #[test]
    fn byte_counts_read_from_toml_as_text_or_integer() {
        #[derive(Deserialize)]
        struct T {
            a: ByteCount,
            b: ByteCount,
        }
        let t: T = toml::from_str("a = \"1 MB\"\nb = 2048\n").unwrap();
        assert_eq!((t.a, t.b), (ByteCount(MIB), ByteCount(2048)));
        assert!(toml::from_str::<T>("a = \"1 furlong\"\nb = 1\n").is_err());
    }

    #[test]
    fn periods_start_at_midnight_monday_and_the_first_of_the_month_utc() {
        // 2026-12-04 19:20:00 UTC, a Friday.
        let now = 1_796_412_000;
        let day = 86_400;
        assert_eq!(
            AccountingPeriod::Day.bounds(now),
            (1_796_342_400, 1_796_342_400 + day)
        );
        // Monday 2026-11-30.
        assert_eq!(
            AccountingPeriod::Week.bounds(now),
            (1_796_342_400 - 4 * day, 1_796_342_400 + 3 * day)
        );
        // 2026-12-01 to 2027-01-01.
        assert_eq!(
            AccountingPeriod::Month.bounds(now),
            (1_796_083_200, 1_798_761_600)
        );
        // February of a leap year has 29 days; the epoch starts a period.
        let (start, end) = AccountingPeriod::Month.bounds(1_709_251_199); // 2024-02-29 23:59:59
        assert_eq!((end - start) / day, 29);
        assert_eq!(AccountingPeriod::Month.bounds(0), (0, 31 * day));
        assert_eq!(AccountingPeriod::Week.bounds(0), (0, 4 * day));
        for period in [
            AccountingPeriod::Day,
            AccountingPeriod::Week,
            AccountingPeriod::Month,
        ] {
            let (start, end) = period.bounds(now);
            assert!(start <= now && now < end, "{period:?}");
            assert_eq!(period.bounds(end), (end, period.bounds(end).1));
            assert_eq!(period.bounds(end - 1), (start, end));
        }
    }

    #[test]
    fn the_allowance_hibernates_softly_then_hard_and_the_next_period_wakes_it() {
        let now = 1_796_412_000;
        let mut a = Accounting::new(100 * MIB, AccountingPeriod::Day, AccountingRule::Max, now);
        a.add(90 * MIB, 94 * MIB);
        assert_eq!(a.hibernation(), Hibernation::Awake);
        a.add(0, MIB);
        assert_eq!(a.used(), 95 * MIB);
        assert_eq!(a.hibernation(), Hibernation::Soft);
        a.add(0, 5 * MIB);
        assert_eq!(a.hibernation(), Hibernation::Hard);
        assert!(!a.turn(a.end() - 1));
        assert_eq!(a.hibernation(), Hibernation::Hard);
        assert!(a.turn(a.end()));
        assert_eq!((a.used(), a.hibernation()), (0, Hibernation::Awake));
    }

    #[test]
    fn the_rule_says_which_bytes_count() {
        let used = |rule| {
            let mut a = Accounting::new(MIB, AccountingPeriod::Day, rule, 0);
            a.add(3, 5);
            a.used()
        };
        assert_eq!(used(AccountingRule::Max), 5);
        assert_eq!(used(AccountingRule::Sum), 8);
        assert_eq!(used(AccountingRule::In), 3);
        assert_eq!(used(AccountingRule::Out), 5);
    }

    #[test]
    fn the_soft_margin_is_capped_for_large_allowances() {
        let mut a = Accounting::new(
            100 * 1024 * MIB,
            AccountingPeriod::Month,
            AccountingRule::Sum,
            0,
        );
        a.add(100 * 1024 * MIB - SOFT_HIBERNATION_MAX_BYTES - 1, 0);
        assert_eq!(a.hibernation(), Hibernation::Awake);
        a.add(1, 0);
        assert_eq!(a.hibernation(), Hibernation::Soft);
    }

    #[test]
    fn a_saved_state_resumes_its_own_period_only() {
        let now = 1_796_412_000;
        let mut a = Accounting::new(MIB, AccountingPeriod::Day, AccountingRule::Max, now);
        a.add(7, 9);
        let text = a.to_text();
        let mut same = Accounting::new(MIB, AccountingPeriod::Day, AccountingRule::Max, now + 60);
        assert_eq!(same.restore(&text), Ok(()));
        assert_eq!(same, a);
        let mut next = Accounting::new(
            MIB,
            AccountingPeriod::Day,
            AccountingRule::Max,
            now + 86_400,
        );
        assert_eq!(next.restore(&text), Err("from another period"));
        assert_eq!(next.used(), 0);
        for bad in ["", "shallot-accounting 1\nperiod_start x\n", "other 1\n"] {
            assert!(next.restore(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_gives_its_rate_to_many_takers_together() {
        let rate = 100 * 1024;
        let traffic = std::sync::Arc::new(Traffic::new(Some((rate, rate)), None));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let traffic = std::sync::Arc::clone(&traffic);
            tasks.push(tokio::spawn(async move {
                for _ in 0..50 {
                    traffic.received(16 * 1024).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // 6.25 MiB at 100 KiB/s with 100 KiB saved up at the start: 63 s.
        let total = 8 * 50 * 16 * 1024;
        let expected = (total - rate) as f64 / rate as f64;
        let took = started.elapsed().as_secs_f64();
        assert!(
            (took - expected).abs() < 0.5,
            "took {took} s, expected {expected}"
        );
        assert_eq!(traffic.totals(), (total, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_directions_have_buckets_of_their_own() {
        let rate = 100 * 1024;
        let traffic = Traffic::new(Some((rate, rate)), None);
        let started = Instant::now();
        traffic.received(usize::try_from(rate).unwrap()).await;
        traffic.sending(usize::try_from(rate).unwrap()).await;
        assert!(started.elapsed() < Duration::from_millis(10));
        traffic.sending(usize::try_from(rate).unwrap()).await;
        let took = started.elapsed().as_secs_f64();
        assert!((took - 1.0).abs() < 0.05, "took {took} s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_allowance_stops_traffic_until_the_period_turns() {
        let now = 1_796_412_000;
        let accounting = Accounting::new(MIB, AccountingPeriod::Day, AccountingRule::Sum, now);
        let end = accounting.end();
        let traffic = std::sync::Arc::new(Traffic::new(None, Some(accounting)));
        let changes = traffic.watch_hibernation();
        traffic.received(1_000_000).await;
        assert_eq!(traffic.hibernation(), Hibernation::Soft);
        assert!(changes.has_changed().unwrap());
        let blocked = {
            let traffic = std::sync::Arc::clone(&traffic);
            tokio::spawn(async move { traffic.sending(100_000).await })
        };
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!blocked.is_finished(), "traffic carried past the allowance");
        assert_eq!(traffic.hibernation(), Hibernation::Hard);
        let (_, until_end) = traffic.tick(end - 10).unwrap();
        assert_eq!(until_end, Duration::from_secs(10));
        assert_eq!(traffic.hibernation(), Hibernation::Hard);
        traffic.tick(end).unwrap();
        assert_eq!(traffic.hibernation(), Hibernation::Awake);
        tokio::time::timeout(Duration::from_secs(1), blocked)
            .await
            .unwrap()
            .unwrap();
    }
}
