use super::*;
use serde_json::json;

fn account() -> Account {
    serde_json::from_value(json!({
        "id": "apn_X1", "external_id": "tenant-42", "healthy": true, "dead": false,
        "app": {"name_slug": "github", "name": "GitHub"},
        "credentials": {"oauth_access_token": "tok-SECRET", "expires_in": 3600, "nested": {"a": 1}, "gone": null,
                        "bad key": "x", "list": (0..1000).collect::<Vec<u32>>(), "big": "y".repeat(200_000)}
    }))
    .unwrap()
}

fn render1(src: &str) -> Result<Vec<u8>, TemplateError> {
    let a = account();
    let t: BTreeMap<String, String> = [("K".to_string(), src.to_string())].into();
    render(
        &t,
        a.credentials.as_ref().unwrap(),
        &a,
        Some("2026-11-22T10:00:00Z"),
    )
    .map(|mut d| d.remove("K").unwrap())
}

#[test]
fn raw_data_keeps_strings_json_encodes_others_and_skips_bad_keys() {
    let a = account();
    let (data, skipped) = raw_data(a.credentials.as_ref().unwrap(), None);
    assert_eq!(data["oauth_access_token"], b"tok-SECRET");
    assert_eq!(data["expires_in"], b"3600");
    assert_eq!(data["nested"], br#"{"a":1}"#);
    assert!(!data.contains_key("gone"));
    assert_eq!(skipped, vec!["bad key".to_string()]);
}

/// Regression (issue 7): a field that was present and is now null made its key (and the mounted file) vanish.
#[test]
fn a_null_field_keeps_the_value_the_secret_already_holds() {
    let a = account();
    let previous: BTreeMap<String, Vec<u8>> = [("gone".to_string(), b"kept".to_vec())].into();
    let (data, _) = raw_data(a.credentials.as_ref().unwrap(), Some(&previous));
    assert_eq!(data["gone"], b"kept");
}

#[test]
fn templates_render_credentials_account_and_expiry_without_escaping() {
    let a = account();
    let t: BTreeMap<String, String> = [
        ("GITHUB_TOKEN".to_string(), "{{ credentials.oauth_access_token }}".to_string()),
        ("config.json".to_string(), r#"{"token": "{{ credentials.oauth_access_token }}", "app": {{ account.app.name_slug | tojson }}}"#.to_string()),
        ("exp".to_string(), "{{ expires_at }}".to_string()),
        ("b64".to_string(), "{{ credentials.oauth_access_token | b64encode }}".to_string()),
        ("loop".to_string(), "{% for k, v in credentials.nested | items %}{{ k }}={{ v }};{% endfor %}".to_string()),
        ("cat".to_string(), "{{ 'Bearer ' ~ credentials.oauth_access_token | upper }}".to_string()),
        ("dflt".to_string(), "{{ credentials.gone | default('none-given') }}".to_string()),
    ]
    .into();
    let out = render(
        &t,
        a.credentials.as_ref().unwrap(),
        &a,
        Some("2026-11-22T10:00:00Z"),
    )
    .unwrap();
    assert_eq!(out["GITHUB_TOKEN"], b"tok-SECRET");
    assert_eq!(
        String::from_utf8(out["config.json"].clone()).unwrap(),
        r#"{"token": "tok-SECRET", "app": "github"}"#
    );
    assert_eq!(out["exp"], b"2026-11-22T10:00:00Z");
    assert_eq!(out["b64"], b"dG9rLVNFQ1JFVA==");
    assert_eq!(out["loop"], b"a=1;");
    assert_eq!(out["cat"], b"Bearer TOK-SECRET");
    assert_eq!(out["dflt"], b"none-given");
}

/// Regression (issue 7): a null field rendered as the literal `None`.
#[test]
fn a_template_using_a_null_field_is_an_error_not_the_word_none() {
    let e = render1("{{ credentials.gone }}").unwrap_err();
    assert_eq!(e.key, "K");
    assert!(e.message.contains("undefined"), "{e}");
}

#[test]
fn undefined_variables_and_syntax_errors_name_the_key_and_hide_values() {
    let e = render1("{{ credentials.missing }}").unwrap_err();
    assert!(
        e.to_string().starts_with("spec.target.template.data[K]: "),
        "{e}"
    );
    let e = render1("{{ credentials.oauth_access_token - 1 }}").unwrap_err();
    assert!(!e.to_string().contains("tok-SECRET"), "{e}");
    let bad: BTreeMap<String, String> = [("K".to_string(), "{{ unclosed".to_string())].into();
    assert!(validate(&bad).unwrap_err().message.contains("syntax"));
}

/// Regression (issue 7): templates ran without limits; `{{ "x" * 100000000 }}`, nested `range` loops and
/// doubling through `set` or macros blocked a worker and blew memory. Each is refused before it runs, naming the
/// key, and the ones that can only be caught while running stop at the fuel or size budget.
#[test]
fn templates_that_could_amplify_memory_or_time_are_refused() {
    let refused = [
        ("{{ 'x' * 100000000 }}", "not allowed"),
        ("{{ credentials.big ** 9 }}", "not allowed"),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            "calls are not allowed",
        ),
        (
            "{% set s = credentials.big %}{% set s = s ~ s %}{{ s }}",
            "no set",
        ),
        (
            "{% with s = credentials.big ~ credentials.big %}{{ s }}{% endwith %}",
            "no set",
        ),
        (
            "{% macro d(s, n) %}{{ d(s ~ s, n - 1) }}{% endmacro %}{{ d('x', 60) }}",
            "",
        ),
        (
            "{% filter upper %}{% for i in credentials.list %}{{ credentials.big }}{% endfor %}{% endfilter %}",
            "no set",
        ),
        (
            "{{ credentials.oauth_access_token | indent(100000000) }}",
            "unknown filter indent",
        ),
        (
            "{% for x in credentials.list recursive %}{{ loop(x) }}{% endfor %}",
            "recursive",
        ),
        (
            &format!("{{{{ {} }}}}", vec!["credentials.big"; 17].join(" ~ ")),
            "17 operands",
        ),
        (&"x".repeat(MAX_TEMPLATE_BYTES + 1), "bytes"),
    ];
    for (src, needle) in refused {
        let t: BTreeMap<String, String> = [("K".to_string(), src.to_string())].into();
        let e = validate(&t).unwrap_err();
        assert_eq!(e.key, "K");
        assert!(
            e.message.contains(needle),
            "{}: {e}",
            &src[..src.len().min(60)]
        );
    }
    // Caught while running: output budget, fuel, capped filters.
    let e =
        render1("{% for i in credentials.list %}{{ credentials.big }}{% endfor %}").unwrap_err();
    assert!(e.message.contains("exceeds"), "{e}");
    let e = render1("{% for a in credentials.list %}{% for b in credentials.list %}{% for c in credentials.list %}{% endfor %}{% endfor %}{% endfor %}").unwrap_err();
    assert!(e.message.contains("computation budget"), "{e}");
    let e = render1("{{ credentials.list | join(credentials.big) }}").unwrap_err();
    assert!(e.message.contains("would exceed"), "{e}");
    let e = render1("{{ credentials.big | replace('y', 'yyyyyyyy') }}").unwrap_err();
    assert!(e.message.contains("would exceed"), "{e}");
    let e = render1("{{ credentials.nested | tojson(100000000) }}").unwrap_err();
    assert!(e.message.contains("indent"), "{e}");
    let e = render1("{{ credentials.big ~ credentials.big | b64encode | b64encode }}").unwrap_err();
    assert!(e.message.contains("would exceed"), "{e}");
}

/// Regression (issue 7): keys `.`, `..` and `..x` passed our check but the API server refuses them.
#[test]
fn secret_keys_follow_the_api_server_rules_exactly() {
    for ok in ["a", "A-b_c.d", ".dotfile", "x..y", &"k".repeat(253)] {
        assert!(is_valid_secret_key(ok), "{ok}");
    }
    for bad in ["", ".", "..", "..x", "a/b", "a b", "é", &"k".repeat(254)] {
        assert!(!is_valid_secret_key(bad), "{bad}");
    }
}

/// Render `src` as key `K` over `account`: it must fail within 3 s, naming the key, with one of `why`.
fn assert_stopped_in_time(account: &Account, src: &str, why: &[&str]) {
    let t: BTreeMap<String, String> = [("K".to_string(), src.to_string())].into();
    let started = std::time::Instant::now();
    let err = render(&t, account.credentials.as_ref().unwrap(), account, None).unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{src}: {:?}",
        started.elapsed()
    );
    assert_eq!(err.key, "K");
    assert!(
        why.iter().any(|m| err.message.contains(m)),
        "{src}: {}",
        err.message
    );
}

/// Issue 17 (9): fuel counts a filter call as one instruction, so sorting or listing a wide credential body
/// inside a loop over it ran for minutes on a blocking thread. Filters charge their work to a per-render budget
/// (and a deadline): such a template fails quickly, naming the key, and ordinary templates are unaffected.
#[test]
fn filter_work_inside_loops_over_a_wide_body_is_bounded() {
    let wide: serde_json::Map<String, Json> = (0..2000)
        .map(|i| (format!("k{i:04}"), json!("y".repeat(200))))
        .collect();
    let account: Account =
        serde_json::from_value(json!({"id": "apn_W1", "credentials": wide})).unwrap();
    for src in [
        "{% for a in credentials %}{{ credentials|dictsort|length }}{% endfor %}",
        "{% for a in credentials %}{{ credentials|items|length }}{% endfor %}",
        "{% for a in credentials %}{{ credentials|tojson|length }}{% endfor %}",
    ] {
        let why = [
            "too expensive",
            "longer than",
            "would exceed",
            "computation budget",
        ];
        assert_stopped_in_time(&account, src, &why);
    }
    // One pass over the same body is fine.
    let t: BTreeMap<String, String> = [(
        "K".to_string(),
        "{{ credentials|dictsort|length }}".to_string(),
    )]
    .into();
    let out = render(&t, account.credentials.as_ref().unwrap(), &account, None).unwrap();
    assert_eq!(out["K"], b"2000");
}

/// Issue 25 (6): the deadline was checked only inside filters; operators and tests (`in`, `==`) ran free, each
/// costing up to the size of its operands, for every instruction of the fuel: a list membership test inside a
/// loop over a long list took minutes on a shared worker. Fuel now shrinks with the context's weight.
#[test]
fn operators_inside_loops_over_a_wide_body_are_bounded() {
    let account: Account = serde_json::from_value(json!({"id": "apn_W1", "credentials": {
        "list": vec![1; 100_000],
        "big": "y".repeat(300_000),
        "big2": "y".repeat(300_000),
    }}))
    .unwrap();
    for src in [
        "{% for i in credentials.list %}{% if 2 in credentials.list %}x{% endif %}{% endfor %}",
        "{% for i in credentials.list %}{% if credentials.list == credentials.list %}{% endif %}{% endfor %}",
        "{% for i in credentials.list %}{% if credentials.big == credentials.big2 %}{% endif %}{% endfor %}",
    ] {
        assert_stopped_in_time(&account, src, &["computation budget"]);
    }
    // Templates over the same body that touch it a few times still render.
    let t: BTreeMap<String, String> = [(
        "K".to_string(),
        "{{ credentials.list|length }} {{ credentials.big|length }}".to_string(),
    )]
    .into();
    let out = render(&t, account.credentials.as_ref().unwrap(), &account, None).unwrap();
    assert_eq!(out["K"], b"100000 300000");
}

/// Real credential bodies keep the whole fuel.
#[test]
fn small_contexts_get_all_the_fuel_and_large_ones_a_bounded_share() {
    let small: serde_json::Map<String, Json> = (0..20)
        .map(|i| (format!("k{i}"), json!("v".repeat(200))))
        .collect();
    assert_eq!(fuel_for(context_weight(&small) + 1024), FUEL);
    let huge: serde_json::Map<String, Json> = [("l".to_string(), json!(vec![1; 1_000_000]))]
        .into_iter()
        .collect();
    assert_eq!(fuel_for(context_weight(&huge)), MIN_FUEL);
    for w in [1u64, 10_000, 1 << 20, 1 << 40] {
        assert!(fuel_for(w) * w <= FUEL_WORK.max(MIN_FUEL * w), "{w}");
    }
}
