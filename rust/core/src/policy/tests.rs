use super::*;
use proptest::prelude::*;

fn cond(attribute: &str, operator: &str, value: Value) -> Condition {
    Condition::new(attribute, operator, value)
}

fn not(mut c: Condition) -> Condition {
    c.negate = true;
    c
}

fn s(v: &str) -> Value {
    Value::Str(v.into())
}

fn list(v: &[&str]) -> Value {
    Value::List(v.iter().map(|x| x.to_string()).collect())
}

fn request<'a>(
    key: &'a str,
    model: &'a str,
    tags: &'a [&'a str],
    params: &'a [Option<f64>],
) -> Request<'a> {
    let mut strings = [None; STRING_ATTRS];
    strings[Attr::Key as usize] = Some(key);
    strings[Attr::Model as usize] = Some(model);
    strings[Attr::Endpoint as usize] = Some("/v1/chat/completions");
    Request {
        strings,
        tags,
        ip: Some("10.1.2.3".parse().unwrap()),
        params,
    }
}

#[test]
fn every_operator() {
    let set = PolicySet::new(&[
        vec![],                                                          // 0: everything
        vec![cond("key", "exact", s("alice"))],                          // 1
        vec![cond("model", "one_of", list(&["gpt-4o", "gpt-4o-mini"]))], // 2
        vec![cond("model", "glob", s("gpt-4*"))],                        // 3
        vec![not(cond("key", "exact", s("alice")))],                     // 4
        vec![cond("ip", "cidr", s("10.0.0.0/8"))],                       // 5
        vec![cond(
            "ip",
            "cidr",
            list(&["192.168.0.0/16", "2001:db8::/32"]),
        )], // 6
        vec![cond("param:max_tokens", ">", Value::Num(1000.0))],         // 7
        vec![cond("tag", "exact", s("batch"))],                          // 8
        vec![
            cond("key", "exact", s("alice")),
            cond("tag", "glob", s("pro*")),
        ], // 9
        vec![cond("user", "exact", s("u1"))],                            // 10: no user in request
        vec![not(cond("user", "exact", s("u1")))],                       // 11
    ])
    .unwrap();
    assert_eq!(set.params(), ["max_tokens"]);
    let tags = ["batch", "prod"];
    let big = [Some(4096.0)];
    assert_eq!(
        set.matches(&request("alice", "gpt-4o", &tags, &big)),
        vec![0, 1, 2, 3, 5, 7, 8, 9, 11]
    );
    let small = [Some(10.0)];
    assert_eq!(
        set.matches(&request("bob", "gpt-3.5", &[], &small)),
        vec![0, 4, 5, 11]
    );
    let absent = [None];
    assert_eq!(
        set.matches(&request("bob", "o1", &[], &absent)),
        vec![0, 4, 5, 11]
    );
}

#[test]
fn one_of_tags_match_once() {
    let set = PolicySet::new(&[vec![cond("tag", "one_of", list(&["a", "b"]))]]).unwrap();
    assert_eq!(set.matches(&request("k", "m", &["a", "b"], &[])), vec![0]);
}

#[test]
fn errors_name_policy_and_condition() {
    let err = PolicySet::new(&[vec![], vec![cond("colour", "exact", s("x"))]]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "policy 1, condition 0: unknown attribute `colour`"
    );
    let err = PolicySet::new(&[vec![cond("key", "cidr", s("x"))]]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "policy 0, condition 0: operator `cidr` does not apply to `key`"
    );
    let err = PolicySet::new(&[vec![cond("ip", "cidr", s("10.0.0.0/33"))]]).unwrap_err();
    assert!(err.to_string().contains("invalid network `10.0.0.0/33`"));
    let err = PolicySet::new(&[vec![cond("param:n", ">", s("3"))]]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "policy 0, condition 0: `param:n` `>` takes a number"
    );
    let err = PolicySet::new(&[vec![cond("model", "one_of", s("x"))]]).unwrap_err();
    assert!(err.to_string().ends_with("takes a list of strings"));
}

#[test]
fn single_address_is_a_host_network() {
    let set = PolicySet::new(&[vec![cond("ip", "cidr", s("10.1.2.3"))]]).unwrap();
    assert_eq!(set.matches(&request("k", "m", &[], &[])), vec![0]);
}

// -- property: the index never changes the answer -----------------------------------------------

const WORDS: [&str; 4] = ["a", "b", "ab", "ba"];

fn word() -> impl Strategy<Value = String> {
    prop::sample::select(WORDS.to_vec()).prop_map(str::to_owned)
}

fn condition() -> impl Strategy<Value = Condition> {
    let attr = prop::sample::select(vec!["key", "team", "model", "provider", "tag"]);
    let strings = prop_oneof![
        word().prop_map(|w| ("exact", Value::Str(w))),
        prop::collection::vec(word(), 1..3).prop_map(|l| ("one_of", Value::List(l))),
        prop::sample::select(vec!["a*", "*a", "?", "*"])
            .prop_map(|g| ("glob", Value::Str(g.into()))),
    ];
    let string_cond = (attr, strings, any::<bool>()).prop_map(|(a, (op, v), n)| Condition {
        attribute: a.into(),
        operator: op.into(),
        value: v,
        negate: n,
    });
    let num_cond = (
        prop::sample::select(vec!["<", ">=", "=="]),
        0..4i32,
        any::<bool>(),
    )
        .prop_map(|(op, v, n)| Condition {
            attribute: "param:n".into(),
            operator: op.into(),
            value: Value::Num(v as f64),
            negate: n,
        });
    prop_oneof![4 => string_cond, 1 => num_cond]
}

fn reference(selectors: &[Vec<Condition>], req: &Request<'_>, set: &PolicySet) -> Vec<u32> {
    // The same semantics, evaluated naively for every policy and condition.
    (0..selectors.len() as u32)
        .filter(|&p| set.policies[p as usize].iter().all(|c| evaluate(c, req)))
        .collect()
}

proptest! {
    #[test]
    fn index_agrees_with_a_linear_scan(
        selectors in prop::collection::vec(prop::collection::vec(condition(), 0..3), 0..30),
        key in prop::option::of(word()),
        team in prop::option::of(word()),
        model in prop::option::of(word()),
        tags in prop::collection::vec(word(), 0..3),
        n in prop::option::of(0..4i32),
    ) {
        let set = PolicySet::new(&selectors).unwrap();
        let mut strings = [None; STRING_ATTRS];
        strings[Attr::Key as usize] = key.as_deref();
        strings[Attr::Team as usize] = team.as_deref();
        strings[Attr::Model as usize] = model.as_deref();
        let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
        let params: Vec<Option<f64>> = set.params().iter().map(|_| n.map(f64::from)).collect();
        let req = Request { strings, tags: &tag_refs, ip: None, params: &params };
        prop_assert_eq!(set.matches(&req), reference(&selectors, &req, &set));
    }
}
