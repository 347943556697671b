use super::*;
use kube::api::ObjectMeta;

fn meta(name: &str, rv: &str, annotations: &[(&str, &str)]) -> PartialObjectMeta<Secret> {
    PartialObjectMeta {
        types: None,
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("team-a".into()),
            resource_version: Some(rv.into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        _phantom: Default::default(),
    }
}

#[test]
fn the_index_follows_the_watch_and_replaces_itself_on_a_relist() {
    let idx = SecretIndex::new(&[None]);
    let id = SecretId::new("team-a", "gh");
    assert_eq!(
        idx.get(&id),
        Err(NotReady),
        "nothing is known before the first listing"
    );
    idx.apply_event(&None, &watcher::Event::Init);
    idx.apply_event(
        &None,
        &watcher::Event::InitApply(meta("gh", "5", &[(OWNER_ANNOTATION, "team-a/gh")])),
    );
    idx.apply_event(
        &None,
        &watcher::Event::InitApply(meta(
            "shared",
            "6",
            &[("merge.pipedream-secrets.io/uid-1", "a")],
        )),
    );
    idx.apply_event(&None, &watcher::Event::InitDone);
    let got = idx.get(&id).unwrap().unwrap();
    assert_eq!(got.resource_version, "5");
    assert_eq!(got.owner.as_deref(), Some("team-a/gh"));
    assert_eq!(
        idx.get(&SecretId::new("team-a", "shared"))
            .unwrap()
            .unwrap()
            .merge_writers,
        ["uid-1"]
    );
    idx.apply_event(&None, &watcher::Event::Apply(meta("gh", "9", &[])));
    assert_eq!(idx.get(&id).unwrap().unwrap().resource_version, "9");
    idx.apply_event(&None, &watcher::Event::Delete(meta("gh", "9", &[])));
    assert_eq!(idx.get(&id), Ok(None));
    // A re-list (after a 410) drops what it no longer lists, once it is complete.
    idx.apply_event(&None, &watcher::Event::Init);
    idx.apply_event(&None, &watcher::Event::InitApply(meta("gh", "12", &[])));
    assert!(
        idx.get(&SecretId::new("team-a", "shared"))
            .unwrap()
            .is_some()
    );
    idx.apply_event(&None, &watcher::Event::InitDone);
    assert_eq!(idx.get(&SecretId::new("team-a", "shared")), Ok(None));
    assert_eq!(idx.len(), 1);
}
