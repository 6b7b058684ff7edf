//! Engine overhead per node step on the self-refine loop, with a scripted
//! model that answers instantly. Run: `cargo bench --bench engine`.
//!
//! One self-refine run executes 10 node steps (draft, 3 × check, 2 × critique,
//! 2 × revise, 2 skips) and 5 model calls; divan reports time per run and,
//! through the items counter, per node step.

use std::sync::Arc;

use divan::counter::ItemsCount;
use redraft::backend::ScriptedModel;
use redraft::{Engine, RunOptions, Workflow};

const STEPS_PER_RUN: usize = 10;

fn setup() -> (Engine, Arc<Workflow>) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let wf =
        redraft::workflow::load(&root.join("workflows/self-refine.yaml")).expect("valid workflow");
    let script = std::fs::read_to_string(root.join("workflows/replies/self-refine.yaml")).unwrap();
    let model = Arc::new(ScriptedModel::from_yaml(&script, "bench").unwrap());
    (Engine::new().with_model("writer", model), Arc::new(wf))
}

#[divan::bench]
fn self_refine_run(bencher: divan::Bencher) {
    let (engine, wf) = setup();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    bencher
        .counter(ItemsCount::new(STEPS_PER_RUN))
        .bench_local(|| {
            let s = rt
                .block_on(engine.run(wf.clone(), RunOptions::default()))
                .unwrap();
            assert_eq!(s.verified, Some(true));
            s
        });
}

fn main() {
    divan::main();
}
