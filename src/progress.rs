//! Live progress for people at a terminal (indicatif): per source the bytes read and
//! stored, the rate and — when the size is known up front — an ETA, plus one line per
//! target for its upload; per object on restore and verify. Off unless stderr is a
//! terminal, with `--quiet`, and always in the daemon. While bars are drawn, log lines are
//! printed above them (`LogWriter`), so the two never tear each other apart.
//!
//! The pipeline only bumps atomic counters (`Meter`); a ticker task turns them into bar
//! positions five times a second, so the data path never waits on the display.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bars of this process, when they are on (for `LogWriter`).
static MULTI: OnceLock<MultiProgress> = OnceLock::new();

/// A handle that makes bars, or nothing when progress is off. Cheap to clone.
#[derive(Clone, Default)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

/// Counters the pipeline bumps for one source.
#[derive(Default)]
pub struct Meter {
    pub read: AtomicU64,
    pub stored: AtomicU64,
    /// Per target, in the order the targets were given.
    pub uploaded: Vec<AtomicU64>,
}

impl Meter {
    pub fn new(targets: usize) -> Self {
        Meter {
            read: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            uploaded: (0..targets).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl Progress {
    /// No bars.
    pub fn off() -> Self {
        Progress { multi: None }
    }

    /// Bars when stderr is a terminal and not `quiet`.
    pub fn for_terminal(quiet: bool) -> Self {
        if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return Self::off();
        }
        let multi = MULTI
            .get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(5)))
            .clone();
        Progress { multi: Some(multi) }
    }

    pub fn is_on(&self) -> bool {
        self.multi.is_some()
    }

    /// Bars for one source being backed up to `targets`; `estimate` is its expected plain
    /// size, when known.
    pub fn source(&self, label: &str, estimate: Option<u64>, targets: &[String]) -> SourceBars {
        let meter = Arc::new(Meter::new(targets.len()));
        let Some(multi) = &self.multi else {
            return SourceBars {
                meter,
                ticker: None,
            };
        };
        let main = multi.add(match estimate {
            Some(total) => ProgressBar::new(total).with_style(style(
                "{prefix:>12} [{bar:20}] {bytes}/{total_bytes} read → {msg} stored · {bytes_per_sec} · ETA {eta}",
            )),
            None => ProgressBar::no_length().with_style(style(
                "{prefix:>12} {spinner} {bytes} read → {msg} stored · {bytes_per_sec}",
            )),
        });
        main.set_prefix(label.to_string());
        let uploads: Vec<ProgressBar> = targets
            .iter()
            .map(|t| {
                let b = multi.add(ProgressBar::no_length().with_style(style(
                    "{prefix:>12}   ↳ {msg}: {bytes} uploaded · {bytes_per_sec}",
                )));
                b.set_prefix(String::new());
                b.set_message(t.clone());
                b
            })
            .collect();
        let m = meter.clone();
        let ticker = tokio::spawn(async move {
            loop {
                main.set_position(m.read.load(Ordering::Relaxed));
                main.set_message(human(m.stored.load(Ordering::Relaxed)));
                for (bar, n) in uploads.iter().zip(&m.uploaded) {
                    bar.set_position(n.load(Ordering::Relaxed));
                }
                if Arc::strong_count(&m) == 1 {
                    // The pipeline is done with the meter: draw the final numbers, leave.
                    main.finish();
                    uploads.iter().for_each(ProgressBar::finish);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        SourceBars {
            meter,
            ticker: Some(ticker),
        }
    }

    /// Wraps a reader of `total` bytes (a stored object being restored or verified).
    pub fn reader(
        &self,
        label: &str,
        total: u64,
        inner: Box<dyn Read + Send>,
    ) -> Box<dyn Read + Send> {
        let Some(multi) = &self.multi else {
            return inner;
        };
        let bar = multi.add(ProgressBar::new(total).with_style(style(
            "{prefix:>12} [{bar:20}] {bytes}/{total_bytes} · {bytes_per_sec} · ETA {eta}",
        )));
        bar.set_prefix(label.to_string());
        Box::new(BarReader { inner, bar })
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn human(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

/// One source's bars and their counters; `finish` waits for the last draw.
pub struct SourceBars {
    pub meter: Arc<Meter>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl SourceBars {
    pub async fn finish(self) {
        let SourceBars { meter, ticker } = self;
        drop(meter);
        if let Some(t) = ticker {
            let _ = t.await;
        }
    }
}

struct BarReader {
    inner: Box<dyn Read + Send>,
    bar: ProgressBar,
}

impl Read for BarReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        if n == 0 && !buf.is_empty() {
            self.bar.finish();
        }
        Ok(n)
    }
}

/// stderr for the log subscriber: prints above the bars while they are drawn.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match MULTI.get() {
            Some(multi) if !multi.is_hidden() => {
                multi.suspend(|| std::io::stderr().write_all(buf))?;
                Ok(buf.len())
            }
            _ => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
