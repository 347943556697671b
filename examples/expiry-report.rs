//! Exposure (seconds a Secret holds an expired token while Pipedream serves a valid one) and calls per token for
//! this operator's schedule and for fixed-interval peers, on the same modelled Pipedream traces.
//!
//! `cargo run --release --example expiry-report [cycles]` prints a Markdown table (README, "Token freshness").

use std::time::Duration;

use pipedream_secrets_operator::schedule::Policy;
use pipedream_secrets_operator::simulate::{Outcome, Poller, behaviours, run};

/// Phases for the fixed pollers (their first sync lands anywhere in a token's life); results are averaged.
const PHASES: [u64; 6] = [17, 431, 1103, 1777, 2459, 3301];

fn main() {
    let cycles: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);
    let start: jiff::Timestamp = "2026-11-22T09:00:00.437Z".parse().expect("timestamp");
    let ours = Poller::Operator {
        policy: Policy {
            before_expiry: Duration::from_secs(300),
            interval: Duration::from_secs(3600),
            propagation: pipedream_secrets_operator::schedule::DEFAULT_PROPAGATION,
        },
        jitter: 0.5,
    };
    let peers = [
        ("External Secrets, refreshInterval 1h", 3600),
        ("1Password operator, 600 s", 600),
        ("Doppler operator, 60 s", 60),
    ];
    println!(
        "{cycles} token lifetimes per behaviour; exposure in seconds per 100 tokens (worst single stretch), calls per token\n"
    );
    print!("| behaviour | this operator |");
    for (name, _) in peers {
        print!(" {name} |");
    }
    println!();
    println!("|---|---|{}", "---|".repeat(peers.len()));
    for (name, up) in behaviours() {
        let o = run(&up, ours, start, cycles);
        print!("| {name} | {} |", cell(&o));
        for (_, every) in peers {
            let runs: Vec<Outcome> = PHASES
                .iter()
                .map(|p| {
                    let phase = Duration::from_secs(p % every);
                    let poller = Poller::Fixed {
                        every: Duration::from_secs(every),
                        phase,
                    };
                    run(&up, poller, start, cycles)
                })
                .collect();
            print!(" {} |", cell(&average(&runs)));
        }
        println!();
    }
}

fn average(runs: &[Outcome]) -> Outcome {
    let n = runs.len().max(1) as u32;
    Outcome {
        calls: runs.iter().map(|r| r.calls).sum::<u32>() / n,
        tokens: runs.iter().map(|r| r.tokens).sum::<u32>() / n,
        exposure: runs.iter().map(|r| r.exposure).sum::<Duration>() / n,
        worst_exposure: runs
            .iter()
            .map(|r| r.worst_exposure)
            .max()
            .unwrap_or_default(),
        ..Outcome::default()
    }
}

fn cell(o: &Outcome) -> String {
    let per_100 = o.exposure.as_secs_f64() * 100.0 / f64::from(o.tokens.max(1));
    format!(
        "{per_100:.0} s ({:.1} s), {:.2}",
        o.worst_exposure.as_secs_f64(),
        o.calls_per_token()
    )
}
