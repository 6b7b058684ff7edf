//! A prompt migration kept as a snapshot test, the way a user keeps theirs
//! (`docs/migrations.md`): `scripts/promptbridge-bench.sh` migrated the
//! MT-Bench category prompt from SmolLM2-135M-Instruct to Gemma 3 270M and
//! recorded every model call into `examples/promptbridge/smollm2-to-gemma3/`;
//! here the migration and its held-out check replay with no model, and the
//! snapshots pin the migrated text and the flips. Re-record, then `cargo
//! insta review`, when a prompt, the mapping or a model changes.

use std::path::{Path, PathBuf};

use redraft::bridge::migrate::{Bridge, CheckSpec};
use redraft::eval::data::{Builtin, DataSpec, Selection, python_package_dir};
use redraft::sandbox::Isolation;

use crate::support::root;

fn example(path: &str) -> PathBuf {
    root().join("examples/promptbridge").join(path)
}

/// What the bench checked: 24 MT-Bench first turns (shuffled with seed 1),
/// right when the reply contains the question's category.
fn check_spec() -> CheckSpec {
    CheckSpec {
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
    }
}

#[tokio::test]
async fn smollm2_to_gemma3_category_prompt() {
    let bridge = Bridge::replay(example("smollm2-to-gemma3")).unwrap();
    let migrated = bridge
        .migrate_workflow(example("category.yaml"))
        .await
        .unwrap();
    assert_eq!(migrated.prompts.len(), 1);
    let p = &migrated.prompts[0];
    assert_eq!(Path::new(&p.file), Path::new("category.j2"));
    insta::assert_snapshot!("smollm2_to_gemma3_category_j2", p.text);

    if python_package_dir(Builtin::MtBench.package().1).is_none() {
        assert!(
            std::env::var("REDRAFT_REQUIRE_PEERS").is_err(),
            "REDRAFT_REQUIRE_PEERS=1 but the MT-Bench package is missing (scripts/fetch-data.sh)"
        );
        eprintln!("skipped the check: the MT-Bench package is missing (scripts/fetch-data.sh)");
        return;
    }
    let report = bridge.check(&migrated, &check_spec()).await.unwrap();
    insta::assert_yaml_snapshot!("smollm2_to_gemma3_category_flips", report.flips());
}
