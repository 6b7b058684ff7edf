//! Replaying a recorded prompt migration: SmolLM2-135M-Instruct → Gemma 3
//! 270M, recorded by `scripts/promptbridge-bench.sh` with `redraft migrate
//! --record`. No model runs: every reply comes from the cassettes, so this
//! prints exactly what the recording saw. The held-out check needs the
//! MT-Bench questions (`scripts/fetch-data.sh`).
//!
//! Run with `cargo run --example migrate`.

use redraft::bridge::migrate::{Bridge, CheckSpec};
use redraft::eval::data::{DataSpec, Selection};
use redraft::sandbox::Isolation;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/promptbridge");
    let bridge = Bridge::replay(format!("{dir}/smollm2-to-gemma3"))?;
    let mapping = bridge.mapping();
    println!("{} → {}", mapping.from, mapping.to);
    if mapping.description.is_empty() {
        println!("no edit learned: the calibrated prompts are the same for both models");
    } else {
        println!("transfer description:\n{}\n", mapping.description);
    }

    let migrated = bridge
        .migrate_workflow(format!("{dir}/category.yaml"))
        .await?;
    for p in &migrated.prompts {
        println!("--- {} (before) ---\n{}", p.file, p.original);
        println!("--- {} (for the target) ---\n{}", p.file, p.text);
    }

    let check = CheckSpec {
        data: DataSpec {
            source: "mtbench".into(),
            map: [("question".to_string(), "turns.0".to_string())].into(),
            answer: Some("category".into()),
            ..DataSpec::default()
        },
        selection: Selection {
            shuffle: Some(1),
            limit: Some(24),
            ..Selection::default()
        },
        scorer: "contains".into(),
        extract: None,
        isolation: Isolation::None,
        concurrency: 1,
    };
    let report = bridge.check(&migrated, &check).await?;
    let pct = |a: Option<f64>| a.map_or("–".to_string(), |a| format!("{:.1}%", a * 100.0));
    println!("\nheld-out check on {} items:", report.items);
    println!(
        "  source prompt on the source model:  {}",
        pct(report.source.accuracy)
    );
    println!(
        "  source prompt on the target model:  {}",
        pct(report.direct.accuracy)
    );
    println!(
        "  migrated prompt on the target model: {}",
        pct(report.migrated.accuracy)
    );
    let f = &report.migrated_vs_source;
    println!(
        "  migrated vs source: {} negative flips {:?}, {} positive",
        f.negative.len(),
        f.negative,
        f.positive.len()
    );
    Ok(())
}
