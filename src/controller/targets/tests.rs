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
    idx.apply(&None, &watcher::Event::Init);
    idx.apply(
        &None,
        &watcher::Event::InitApply(meta("gh", "5", &[(OWNER_ANNOTATION, "team-a/gh")])),
    );
    idx.apply(
        &None,
        &watcher::Event::InitApply(meta(
            "shared",
            "6",
            &[("merge.pipedream-secrets.io/uid-1", "a")],
        )),
    );
    idx.apply(&None, &watcher::Event::InitDone);
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
    idx.apply(&None, &watcher::Event::Apply(meta("gh", "9", &[])));
    assert_eq!(idx.get(&id).unwrap().unwrap().resource_version, "9");
    idx.apply(&None, &watcher::Event::Delete(meta("gh", "9", &[])));
    assert_eq!(idx.get(&id), Ok(None));
    // A re-list (after a 410) drops what it no longer lists, once it is complete.
    idx.apply(&None, &watcher::Event::Init);
    idx.apply(&None, &watcher::Event::InitApply(meta("gh", "12", &[])));
    assert!(
        idx.get(&SecretId::new("team-a", "shared"))
            .unwrap()
            .is_some()
    );
    idx.apply(&None, &watcher::Event::InitDone);
    assert_eq!(idx.get(&SecretId::new("team-a", "shared")), Ok(None));
    assert_eq!(idx.len(), 1);
}

#[tokio::test]
async fn foreign_names_come_from_the_watch_once_it_has_listed() {
    // A client that cannot connect: any request would fail the lookup.
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let client = Client::try_from(config).unwrap();
    let names = ForeignNames::default();
    let theirs = SecretId::new("team-a", "theirs");
    assert!(
        names.exists(&client, &theirs).await.is_err(),
        "before the watch has listed, the lookup asks the API"
    );
    names.apply(&None, &watcher::Event::Init);
    names.apply(&None, &watcher::Event::InitApply(meta("theirs", "3", &[])));
    names.apply(&None, &watcher::Event::InitDone);
    assert!(names.exists(&client, &theirs).await.unwrap());
    assert!(
        !names
            .exists(&client, &SecretId::new("team-a", "free"))
            .await
            .unwrap()
    );
    names.apply(&None, &watcher::Event::Delete(meta("theirs", "3", &[])));
    assert!(!names.exists(&client, &theirs).await.unwrap());
    names.apply(&None, &watcher::Event::Apply(meta("theirs", "4", &[])));
    assert!(names.exists(&client, &theirs).await.unwrap());
    // A re-list (after a 410) replaces the names once it is complete.
    names.apply(&None, &watcher::Event::Init);
    names.apply(&None, &watcher::Event::InitApply(meta("other", "5", &[])));
    assert!(names.exists(&client, &theirs).await.unwrap());
    names.apply(&None, &watcher::Event::InitDone);
    assert!(!names.exists(&client, &theirs).await.unwrap());
    assert!(
        names
            .exists(&client, &SecretId::new("team-a", "other"))
            .await
            .unwrap()
    );
}

/// Regression (issue 18): with several watched namespaces, one namespace's listing finishing first replaced
/// the whole index and declared it ready, so the other namespace's Secrets looked deleted and were fetched
/// again after a failover.
#[test]
fn each_watched_namespace_keeps_its_own_listing() {
    let scopes = [Some("ops".to_string()), Some("team-a".to_string())];
    let idx = SecretIndex::new(&scopes);
    idx.apply(&scopes[1], &watcher::Event::Init);
    idx.apply(&scopes[1], &watcher::Event::InitApply(meta("gh", "5", &[])));
    idx.apply(&scopes[0], &watcher::Event::Init);
    idx.apply(&scopes[0], &watcher::Event::InitDone);
    assert!(!idx.is_ready());
    assert_eq!(
        idx.get(&SecretId::new("team-a", "gh")),
        Err(NotReady),
        "team-a is not listed yet"
    );
    idx.apply(&scopes[1], &watcher::Event::InitDone);
    assert!(idx.is_ready());
    assert!(idx.get(&SecretId::new("team-a", "gh")).unwrap().is_some());
    assert_eq!(idx.get(&SecretId::new("ops", "gh")), Ok(None));
}
