//! Bulk import into real Postgres: the shipped Amazon Games sample loads with the right
//! counts, a re-run is a no-op, a failure half-way leaves nothing behind, and `load_into` (the
//! sequence of `agp import` and the console's sample) checks before it asks for the database,
//! holds out and records the project's source.

mod common;

use agp_rerank::catalog::{NewInteraction, NewItem};
use agp_rerank::import::{self, Format};
use agp_rerank::store;

fn sample_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/amazon-games-sample")
}

#[tokio::test]
async fn amazon_sample_imports_idempotently() {
    let (pool, _) = common::fresh_db().await;
    let data = import::read(Format::Recbole, &[sample_dir()]).expect("read sample");
    let users: std::collections::HashSet<_> = data
        .interactions
        .iter()
        .map(|i| i.user_id.clone())
        .collect();
    assert_eq!(users.len(), 300);
    let mut calls = 0;
    let s = store::import::write(&pool, "default", &data.items, &data.interactions, |_| {
        calls += 1
    })
    .await
    .unwrap();
    assert!(calls >= 2, "progress reported per chunk");
    assert_eq!(s.items_changed as usize, data.items.len());
    assert_eq!(s.interactions.inserted as usize, data.interactions.len());
    let (items, users_n, inters) = store::catalog::counts(&pool, "default").await.unwrap();
    assert_eq!(
        (items as usize, users_n, inters as usize),
        (data.items.len(), 300, data.interactions.len())
    );

    // History order is the file order: the last history item of user 0 is the held-out target.
    let first_user = &data.interactions[0].user_id;
    let expected: Vec<_> = data
        .interactions
        .iter()
        .filter(|i| &i.user_id == first_user)
        .map(|i| i.item_id.clone())
        .collect();
    let hist = store::catalog::history(&pool, "default", first_user, 1000)
        .await
        .unwrap()
        .unwrap();
    let got: Vec<_> = hist.iter().map(|h| h.item_id.clone()).collect();
    assert_eq!(got, expected);

    let again = store::import::write(&pool, "default", &data.items, &data.interactions, |_| {})
        .await
        .unwrap();
    assert_eq!(again.items_changed, 0);
    assert_eq!(again.interactions.inserted, 0);
    assert_eq!(
        again.interactions.duplicates as usize,
        data.interactions.len()
    );
}

#[tokio::test]
async fn failure_half_way_rolls_everything_back() {
    let (pool, _) = common::fresh_db().await;
    let items: Vec<NewItem> = (0..10)
        .map(|i| NewItem {
            id: format!("i{i}"),
            title: format!("T{i}"),
            text: None,
            attributes: None,
        })
        .collect();
    // More rows than one chunk, and the very last one points at an item that does not exist:
    // the foreign key fails in the last statement, after items and earlier chunks were sent.
    let mut inters: Vec<NewInteraction> = (0..store::import::CHUNK + 5)
        .map(|k| NewInteraction {
            user_id: format!("u{}", k % 50),
            item_id: format!("i{}", k % 10),
            kind: None,
            value: None,
            timestamp: None,
        })
        .collect();
    inters.last_mut().unwrap().item_id = "ghost".into();
    let err = store::import::write(&pool, "default", &items, &inters, |_| {}).await;
    assert!(err.is_err());
    let (i, u, x) = store::catalog::counts(&pool, "default").await.unwrap();
    assert_eq!((i, u, x), (0, 0, 0), "nothing half-written");
}

#[tokio::test]
async fn load_into_checks_holds_out_writes_and_records_the_source() {
    let (pool, _) = common::fresh_db().await;
    let dir = sample_dir();
    let files: Vec<import::MemoryFile> = ["Games-6k-sample.item", "Games-6k-sample.test.inter"]
        .into_iter()
        .map(|name| import::MemoryFile {
            name: name.into(),
            bytes: std::fs::read(dir.join(name)).expect("sample file").into(),
        })
        .collect();
    let load = |input, limits, project: &str| import::Load {
        project: project.into(),
        format: Format::Recbole,
        input,
        limits,
        hold_out_last: true,
        record_source: true,
    };

    // A title over the limit: refused before the database is asked for.
    let strict = agp_rerank::catalog::Limits {
        max_title_len: 5,
        ..Default::default()
    };
    let mut asked = false;
    let err = import::load_into(
        load(import::Input::Memory(files.clone()), strict, "default"),
        async || {
            asked = true;
            Ok(pool.clone())
        },
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, import::LoadError::Invalid(_)), "{err}");
    let message = err.to_string();
    assert!(
        message.starts_with("item #1 (") && message.ends_with("; nothing was written"),
        "{message}"
    );
    assert!(!asked, "the database was asked for");

    // From memory and from disk: the same rows, 300 last interactions held out.
    for (input, project) in [
        (import::Input::Memory(files), "default"),
        (import::Input::Paths(vec![dir.clone()]), "disk"),
    ] {
        agp_rerank::app::ensure_project(&pool, project)
            .await
            .unwrap();
        let (mut read, mut held, mut written) = (0, 0, 0);
        let loaded = import::load_into(
            load(input, Default::default(), project),
            async || Ok(pool.clone()),
            |p| match p {
                import::Progress::Read { data, .. } => read = data.interactions.len(),
                import::Progress::HeldOut(n) => held = n,
                import::Progress::Written { rows, total } => {
                    assert!(rows <= total);
                    written = rows;
                }
            },
        )
        .await
        .unwrap();
        assert_eq!((read, held), (3940, 300));
        assert_eq!((loaded.items, loaded.interactions), (2990, 3640));
        assert_eq!(written, 2990 + 3640);
        assert_eq!(loaded.summary.interactions.inserted, 3640);
        let (items, users, inters) = store::catalog::counts(&pool, project).await.unwrap();
        assert_eq!((items, users, inters), (2990, 300, 3640));
        assert_eq!(
            store::catalog::history_order(&pool, project).await.unwrap(),
            agp_rerank::store::states::HistoryOrder::Chronological
        );
    }
    assert_eq!(
        store::catalog::dataset(&pool, "default")
            .await
            .unwrap()
            .as_deref(),
        Some(
            "Games-6k-sample.item, Games-6k-sample.test.inter (recbole, each user's last interaction held out)"
        )
    );
    assert_eq!(
        store::catalog::dataset(&pool, "disk")
            .await
            .unwrap()
            .as_deref(),
        Some("amazon-games-sample (recbole, each user's last interaction held out)")
    );
}
