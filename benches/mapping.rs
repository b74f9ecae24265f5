//! Micro-benchmark of the mapping engine: parse + map of the shipped ServiceNow sample
//! on one core. Run with `cargo bench --bench mapping`; prints docs/s and ns/doc.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use safepoint_gateway::mapping::xml::{Document, Limits};
use safepoint_gateway::mapping::MappingPlan;

/// CPU time of this thread in ns (Linux `schedstat`), so that the figure stays a
/// per-core figure on a shared, busy machine; `None` elsewhere (wall clock is used).
fn cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A clock reading: wall time plus thread CPU time when available.
struct Clock {
    wall: Instant,
    cpu: Option<u64>,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            wall: Instant::now(),
            cpu: cpu_ns(),
        }
    }

    /// Nanoseconds spent on the CPU since `start` (wall time without schedstat).
    fn elapsed_ns(&self) -> f64 {
        match (self.cpu, cpu_ns()) {
            (Some(a), Some(b)) => (b - a) as f64,
            _ => self.wall.elapsed().as_nanos() as f64,
        }
    }
}

fn main() {
    println!(
        "clock: {}",
        if cpu_ns().is_some() {
            "thread CPU time (/proc/thread-self/schedstat)"
        } else {
            "wall time"
        }
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let plan =
        MappingPlan::load(&root.join("mappings/servicenow.toml")).expect("servicenow mapping");
    let sample =
        std::fs::read(root.join("mappings/fixtures/servicenow/happy.input.xml")).expect("sample");
    let remedy = MappingPlan::load(&root.join("mappings/remedy.toml")).expect("remedy mapping");
    let remedy_sample =
        std::fs::read(root.join("mappings/fixtures/remedy/happy.input.xml")).expect("sample");
    let limits = Limits::default();

    let run = |name: &str, plan: &MappingPlan, bytes: &[u8]| {
        // Sanity: the sample must map, or we would be timing the error path.
        let doc = Document::parse(bytes, &limits).expect("parse");
        plan.map_document(&doc).expect("map");
        // Warm up, then measure batches for about two seconds.
        let once = || {
            let doc = Document::parse(black_box(bytes), &limits).expect("parse");
            black_box(plan.map_document(&doc).expect("map"));
        };
        for _ in 0..20_000 {
            once();
        }
        let mut best = f64::MAX;
        let mut total = 0u64;
        let wall = Instant::now();
        let start = Clock::start();
        while wall.elapsed() < Duration::from_secs(2) {
            let batch = 20_000u64;
            let t = Clock::start();
            for _ in 0..batch {
                once();
            }
            let ns = t.elapsed_ns() / batch as f64;
            best = best.min(ns);
            total += batch;
        }
        let mean = start.elapsed_ns() / total as f64;
        println!(
            "{name}: {} bytes, parse + map: {:.0} docs/s per core (mean {:.0} ns/doc, best batch {:.0} ns/doc, {} docs)",
            bytes.len(),
            1e9 / mean,
            mean,
            best,
            total
        );
    };
    run("servicenow", &plan, &sample);
    // Where the time goes, for the ServiceNow sample.
    let doc = Document::parse(&sample, &limits).expect("parse");
    let time = |what: &str, f: &dyn Fn()| {
        let n = 200_000;
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        println!(
            "  {what}: {:.0} ns/doc",
            t.elapsed().as_nanos() as f64 / n as f64
        );
    };
    time("parse only", &|| {
        black_box(Document::parse(black_box(&sample), &limits).expect("parse"));
    });
    time("map only", &|| {
        black_box(plan.map_document(black_box(&doc)).expect("map"));
    });
    run("remedy (SOAP 1.1, namespaces)", &remedy, &remedy_sample);
}
