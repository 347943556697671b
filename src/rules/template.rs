//! Secret data rendering: raw credential fields or minijinja templates. Errors never quote credential values.
//! (Over 400 lines: the whole sandbox is here, so every limit is read beside what it limits.)
//!
//! Templates come from tenants and run in the shared operator, so the language is cut down to what cannot
//! amplify memory or time: output expressions, `if`, and `for` over the context's own values; no `set`, `with`,
//! macros, calls or filter blocks; no `*` or `**`; at most 16 operands joined by `~`/`+` in one expression; a
//! curated filter set whose every result is capped; a fuel budget (instructions); a work budget that every filter
//! charges by the size of what it processes (fuel counts a filter call as one instruction, so `dictsort` inside a
//! loop over a wide credential body would otherwise run for minutes); a render deadline; and a capped output.

use std::collections::BTreeMap;
use std::io::Write;

use base64::Engine;
use minijinja::machinery::{WhitespaceConfig, ast};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Kwargs;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior, Value};
use serde_json::Value as Json;

use crate::pipedream::{Account, Credentials};

/// Largest template source per key.
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024;
/// Largest total template source.
pub const MAX_TEMPLATES_BYTES: usize = 64 * 1024;
/// Most operands one expression may join with `~` or `+`.
pub const MAX_CONCAT_OPERANDS: usize = 16;
/// Largest result of any filter.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;
/// Instructions one render may execute over a small context.
pub const FUEL: u64 = 200_000;
/// Instructions times context weight one render may spend. Operators and tests (`in`, `==`, `<`, `~`) run inside
/// the engine without charging the work budget, and each costs up to the size of its operands, which are the
/// context's own values (or joins of at most [`MAX_CONCAT_OPERANDS`] of them): bounding instructions by the
/// context's weight bounds the whole render. Contexts up to 8 KiB in a few dozen values (every real credential
/// body) get all of [`FUEL`]; a 1 MiB text about 8,000 instructions (less if it holds many values), enough for a
/// few dozen keys.
pub const FUEL_WORK: u64 = 1 << 33;
/// No context gets less fuel than this (a few keys' worth of plain lookups).
pub const MIN_FUEL: u64 = 100;

/// The fuel of a render over a context of `weight` (see [`context_weight`]).
pub fn fuel_for(weight: u64) -> u64 {
    (FUEL_WORK / weight.max(1)).clamp(MIN_FUEL, FUEL)
}

/// The weight of credentials for [`fuel_for`]: their bytes, and 1,024 for every value in them (comparing or
/// searching a list costs per element, whatever the element's size: a comparison of two values costs about what
/// comparing a kilobyte of text does).
pub fn context_weight(credentials: &serde_json::Map<String, Json>) -> u64 {
    fn values(v: &Json) -> u64 {
        match v {
            Json::Array(a) => 1 + a.iter().map(values).sum::<u64>(),
            Json::Object(o) => 1 + o.values().map(values).sum::<u64>(),
            _ => 1,
        }
    }
    let bytes = serde_json::to_string(credentials).map_or(0, |t| t.len() as u64);
    bytes + 1024 * credentials.values().map(values).sum::<u64>()
}
/// Largest Secret data the operator writes (Kubernetes caps a whole Secret at 1 MiB).
pub const MAX_SECRET_DATA_BYTES: usize = 1_000_000;
/// Units of work (items sorted or listed, bytes transformed) the filters of one render may do.
pub const WORK: u64 = 4_000_000;
/// Longest one render may take.
pub const RENDER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

thread_local! {
    /// Work left and the deadline of the render running on this thread (renders run on a blocking thread each).
    static BUDGET: std::cell::Cell<(u64, Option<std::time::Instant>)> =
        const { std::cell::Cell::new((u64::MAX, None)) };
}

/// Charge `units` of work to the running render: an error once its budget or its deadline is spent.
fn charge(units: usize) -> Result<(), Error> {
    BUDGET.with(|b| {
        let (left, deadline) = b.get();
        let units = units as u64;
        if units > left {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("the template is too expensive (more than {WORK} units of filter work)"),
            ));
        }
        if deadline.is_some_and(|d| std::time::Instant::now() > d) {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "the template took longer than {} s to render",
                    RENDER_DEADLINE.as_secs()
                ),
            ));
        }
        b.set((left - units, deadline));
        Ok(())
    })
}

fn size(v: &Value) -> usize {
    v.as_str().map(str::len).or_else(|| v.len()).unwrap_or(1)
}

/// A template that does not compile or render, naming the Secret key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.target.template.data[{key}]: {message}")]
pub struct TemplateError {
    /// The Secret key whose template failed.
    pub key: String,
    /// What failed (never a credential value).
    pub message: String,
}

fn too_big(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("{what} would exceed {MAX_VALUE_BYTES} bytes"),
    )
}

fn cap(v: Value) -> Result<Value, Error> {
    match v.as_str() {
        Some(s) if s.len() > MAX_VALUE_BYTES => Err(too_big("the result")),
        _ => Ok(v),
    }
}

fn join(state: &State, v: &Value, sep: Option<String>) -> Result<String, Error> {
    charge(size(v))?;
    let sep = sep.unwrap_or_default();
    let mut out = String::new();
    for (i, item) in v.try_iter()?.enumerate() {
        let s = if item.is_undefined() {
            return Err(Error::new(
                ErrorKind::UndefinedError,
                "join over an undefined item",
            ));
        } else {
            minijinja::filters::string(state, &item)?.to_string()
        };
        if out.len() + s.len() + if i > 0 { sep.len() } else { 0 } > MAX_VALUE_BYTES {
            return Err(too_big("join"));
        }
        if i > 0 {
            out.push_str(&sep);
        }
        out.push_str(&s);
    }
    Ok(out)
}

fn replace(s: String, from: String, to: String) -> Result<String, Error> {
    charge(s.len())?;
    let hits = if from.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(from.as_str()).count()
    };
    let len = s.len() - hits.min(s.len()) * from.len() + hits.saturating_mul(to.len());
    if len > MAX_VALUE_BYTES {
        return Err(too_big("replace"));
    }
    Ok(s.replace(&from, &to))
}

fn tojson(v: &Value, indent: Option<Value>, kw: Kwargs) -> Result<Value, Error> {
    charge(size(v))?;
    if indent
        .as_ref()
        .and_then(|i| i64::try_from(i.clone()).ok())
        .is_some_and(|i| !(0..=8).contains(&i))
    {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson indent must be 0 to 8",
        ));
    }
    cap(minijinja::filters::tojson(v, indent, kw)?)
}

/// The template language: minijinja's engine with only the filters and tests listed here.
///
/// Long because it is a table: one registration per allowed filter and test, each charging its own work.
fn environment() -> Environment<'static> {
    use minijinja::{filters as f, tests as t};
    let mut env = Environment::empty();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Secret values are written verbatim (minijinja would JSON-escape templates named *.json).
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(FUEL));
    // Every filter charges the work it does (see `charge`) before doing it.
    env.add_filter("upper", |s: String| {
        charge(s.len())?;
        cap(Value::from(s.to_uppercase()))
    });
    env.add_filter("lower", |s: String| {
        charge(s.len())?;
        cap(Value::from(s.to_lowercase()))
    });
    env.add_filter("title", |s: String| {
        charge(s.len())?;
        cap(Value::from(f::title(s.into())))
    });
    env.add_filter("trim", |s: String, chars: Option<String>| {
        charge(s.len())?;
        Ok::<_, Error>(match chars {
            Some(chars) => s
                .trim_matches(&chars.chars().collect::<Vec<_>>()[..])
                .to_owned(),
            None => s.trim().to_owned(),
        })
    });
    env.add_filter("default", f::default);
    env.add_filter("d", f::default);
    env.add_filter("length", |v: &Value| {
        charge(1)?;
        f::length(v)
    });
    env.add_filter("count", |v: &Value| {
        charge(1)?;
        f::length(v)
    });
    env.add_filter("first", |v: &Value| {
        charge(1)?;
        f::first(v)
    });
    env.add_filter("last", |v: &Value| {
        charge(size(v))?;
        f::last(v.clone())
    });
    env.add_filter("items", |v: &Value| {
        charge(size(v))?;
        f::items(v)
    });
    env.add_filter("dictsort", |v: &Value, kw: Kwargs| {
        // Sorting n items: about n log n comparisons.
        let n = size(v);
        charge(
            n.saturating_mul(usize::BITS as usize - n.leading_zeros() as usize)
                .max(1),
        )?;
        f::dictsort(v, kw)
    });
    env.add_filter("int", f::int);
    env.add_filter("float", f::float);
    env.add_filter("string", |st: &State, v: &Value| {
        charge(size(v))?;
        cap(f::string(st, v)?)
    });
    env.add_filter("join", join);
    env.add_filter("replace", replace);
    env.add_filter("tojson", tojson);
    env.add_filter("b64encode", |s: String| {
        charge(s.len())?;
        cap(Value::from(
            base64::engine::general_purpose::STANDARD.encode(s),
        ))
    });
    env.add_filter("b64decode", |s: String| -> Result<String, Error> {
        charge(s.len())?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    "b64decode: input is not base64",
                )
            })?;
        String::from_utf8(bytes).map_err(|_| {
            Error::new(
                ErrorKind::InvalidOperation,
                "b64decode: result is not UTF-8",
            )
        })
    });
    env.add_test("defined", t::is_defined);
    env.add_test("undefined", t::is_undefined);
    env.add_test("none", t::is_none);
    env.add_test("string", t::is_string);
    env.add_test("number", t::is_number);
    env.add_test("mapping", t::is_mapping);
    env.add_test("sequence", t::is_sequence);
    env.add_test("true", t::is_true);
    env.add_test("false", t::is_false);
    env.add_test("eq", t::is_eq);
    env.add_test("ne", t::is_ne);
    env.add_test("in", t::is_in);
    env.add_test("startingwith", t::is_startingwith);
    env.add_test("endingwith", t::is_endingwith);
    env
}

/// Filters and tests a template may use.
pub const FILTERS: &[&str] = &[
    "upper",
    "lower",
    "title",
    "trim",
    "default",
    "d",
    "length",
    "count",
    "first",
    "last",
    "items",
    "dictsort",
    "int",
    "float",
    "string",
    "join",
    "replace",
    "tojson",
    "b64encode",
    "b64decode",
];
const TESTS: &[&str] = &[
    "defined",
    "undefined",
    "none",
    "string",
    "number",
    "mapping",
    "sequence",
    "true",
    "false",
    "eq",
    "ne",
    "in",
    "startingwith",
    "endingwith",
];

fn describe(e: &Error) -> String {
    // Syntax and undefined-variable details refer to the template text, never to values; other details might.
    let detail = match e.kind() {
        ErrorKind::SyntaxError
        | ErrorKind::UndefinedError
        | ErrorKind::UnknownFilter
        | ErrorKind::UnknownTest
        | ErrorKind::UnknownFunction => e.detail().map(|d| format!(": {d}")).unwrap_or_default(),
        ErrorKind::OutOfFuel => ": the template exceeded its computation budget".into(),
        ErrorKind::WriteFailure => {
            format!(": the rendered data exceeds {MAX_SECRET_DATA_BYTES} bytes")
        }
        ErrorKind::InvalidOperation => e
            .detail()
            // Only the operator's own messages, which name limits and never values.
            .filter(|d| {
                [
                    "would exceed",
                    "tojson indent",
                    "too expensive",
                    "took longer than",
                ]
                .iter()
                .any(|m| d.contains(m))
            })
            .map(|d| format!(": {d}"))
            .unwrap_or_default(),
        _ => String::new(),
    };
    let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
    format!("{}{detail}{line}", e.kind())
}

/// What a template may not do, found by walking its syntax tree.
struct Checker {
    problem: Option<String>,
}

impl Checker {
    fn fail(&mut self, m: impl Into<String>) {
        self.problem.get_or_insert_with(|| m.into());
    }

    fn stmts(&mut self, stmts: &[ast::Stmt<'_>]) {
        for s in stmts {
            self.stmt(s);
        }
    }

    fn stmt(&mut self, s: &ast::Stmt<'_>) {
        match s {
            ast::Stmt::Template(t) => self.stmts(&t.children),
            ast::Stmt::EmitExpr(e) => self.root(&e.expr),
            ast::Stmt::EmitRaw(_) => {}
            ast::Stmt::ForLoop(l) => {
                if l.recursive {
                    self.fail("recursive loops are not allowed");
                }
                self.root(&l.iter);
                if let Some(f) = &l.filter_expr {
                    self.root(f);
                }
                self.stmts(&l.body);
                self.stmts(&l.else_body);
            }
            ast::Stmt::IfCond(c) => {
                self.root(&c.expr);
                self.stmts(&c.true_body);
                self.stmts(&c.false_body);
            }
            _ => self.fail(
                "only output expressions, if and for are allowed (no set, with, filter blocks or macros)",
            ),
        }
    }

    /// An expression whose value is built fresh: count its concatenations.
    fn root(&mut self, e: &ast::Expr<'_>) {
        let n = self.expr(e);
        if n > MAX_CONCAT_OPERANDS {
            self.fail(format!(
                "an expression joins {n} operands with ~ or +; at most {MAX_CONCAT_OPERANDS}"
            ));
        }
    }

    fn args(&mut self, args: &[ast::CallArg<'_>]) {
        for a in args {
            match a {
                ast::CallArg::Pos(e)
                | ast::CallArg::Kwarg(_, e)
                | ast::CallArg::PosSplat(e)
                | ast::CallArg::KwargSplat(e) => self.root(e),
            }
        }
    }

    /// Walk `e`; returns how many operands its top-level `~`/`+` chain joins.
    ///
    /// Long because it is one match: an arm per kind of expression in minijinja's syntax tree.
    fn expr(&mut self, e: &ast::Expr<'_>) -> usize {
        match e {
            ast::Expr::Var(_) | ast::Expr::Const(_) => 1,
            ast::Expr::BinOp(b) => match b.op {
                ast::BinOpKind::Mul | ast::BinOpKind::Pow => {
                    self.fail(
                        "the * and ** operators are not allowed (they can build huge values)",
                    );
                    1
                }
                ast::BinOpKind::Concat | ast::BinOpKind::Add => {
                    self.expr(&b.left).saturating_add(self.expr(&b.right))
                }
                _ => {
                    self.root(&b.left);
                    self.root(&b.right);
                    1
                }
            },
            ast::Expr::UnaryOp(u) => {
                self.root(&u.expr);
                1
            }
            ast::Expr::Slice(s) => {
                self.root(&s.expr);
                for x in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    self.root(x);
                }
                1
            }
            ast::Expr::Compare(c) => {
                self.root(&c.expr);
                for op in &c.ops {
                    self.root(&op.expr);
                }
                1
            }
            ast::Expr::IfExpr(i) => {
                self.root(&i.test_expr);
                let t = self.expr(&i.true_expr);
                let f = i.false_expr.as_ref().map_or(1, |f| self.expr(f));
                t.max(f)
            }
            ast::Expr::Filter(f) => {
                if !FILTERS.contains(&f.name) {
                    self.fail(format!(
                        "unknown filter {}; available: {}",
                        f.name,
                        FILTERS.join(", ")
                    ));
                }
                if let Some(x) = &f.expr {
                    self.root(x);
                }
                self.args(&f.args);
                1
            }
            ast::Expr::Test(t) => {
                if !TESTS.contains(&t.name) {
                    self.fail(format!("unknown test {}", t.name));
                }
                self.root(&t.expr);
                self.args(&t.args);
                1
            }
            ast::Expr::GetAttr(g) => {
                self.root(&g.expr);
                1
            }
            ast::Expr::GetItem(g) => {
                self.root(&g.expr);
                self.root(&g.subscript_expr);
                1
            }
            ast::Expr::Call(_) => {
                self.fail("function and method calls are not allowed");
                1
            }
            ast::Expr::List(l) => {
                for i in &l.items {
                    self.root(i);
                }
                1
            }
            ast::Expr::Map(m) => {
                for x in m.keys.iter().chain(&m.values) {
                    self.root(x);
                }
                1
            }
        }
    }
}

/// The template of `key` parses and stays inside the allowed language.
fn check_language(key: &str, source: &str) -> Result<(), TemplateError> {
    let fail = |message| TemplateError {
        key: key.to_string(),
        message,
    };
    if source.len() > MAX_TEMPLATE_BYTES {
        return Err(fail(format!(
            "the template is {} bytes; at most {MAX_TEMPLATE_BYTES}",
            source.len()
        )));
    }
    let tree = minijinja::machinery::parse(
        source,
        "template",
        SyntaxConfig,
        WhitespaceConfig::default(),
    )
    .map_err(|e| fail(describe(&e)))?;
    let mut c = Checker { problem: None };
    c.stmt(&tree);
    c.problem.map_or(Ok(()), |p| Err(fail(p)))
}

/// Check every template parses, stays inside the allowed language, and compiles (before anything is fetched).
pub fn validate(templates: &BTreeMap<String, String>) -> Result<(), TemplateError> {
    let total: usize = templates.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_TEMPLATES_BYTES {
        let key = templates.keys().next_back().cloned().unwrap_or_default();
        return Err(TemplateError {
            key,
            message: format!(
                "the templates are {total} bytes together; at most {MAX_TEMPLATES_BYTES}"
            ),
        });
    }
    let env = environment();
    for (key, source) in templates {
        let fail = |message| TemplateError {
            key: key.clone(),
            message,
        };
        check_language(key, source)?;
        env.template_from_str(source)
            .map_err(|e| fail(describe(&e)))?;
    }
    Ok(())
}

/// The template context: `credentials` (null fields left out, so using one is an error), `account`,
/// `expires_at`.
/// The template context, and its weight (see [`context_weight`]).
fn context(credentials: &Credentials, account: &Account, expires_at: Option<&str>) -> (Value, u64) {
    let app = account.app.clone().unwrap_or_default();
    let account_json = serde_json::json!({
        "id": account.id,
        "name": account.name,
        "external_id": account.external_id,
        "healthy": account.healthy,
        "dead": account.dead,
        "app": { "id": app.id, "name_slug": app.name_slug, "name": app.name, "auth_type": app.auth_type },
    });
    let creds: serde_json::Map<String, Json> = credentials
        .expose()
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .collect();
    let weight = context_weight(&creds) + 1024;
    let ctx = Value::from_serialize(serde_json::json!({
        "credentials": creds,
        "account": account_json,
        "expires_at": expires_at,
    }));
    (ctx, weight)
}

/// A writer that fails once more than its budget has been written.
struct Capped<'a> {
    out: Vec<u8>,
    left: &'a mut usize,
}

impl Write for Capped<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if b.len() > *self.left {
            return Err(std::io::Error::other("output budget exceeded"));
        }
        *self.left -= b.len();
        self.out.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Render each template against the fetched account, within the fuel and size limits. CPU-bound: call it off the
/// async runtime (`spawn_blocking`).
pub fn render(
    templates: &BTreeMap<String, String>,
    credentials: &Credentials,
    account: &Account,
    expires_at: Option<&str>,
) -> Result<BTreeMap<String, Vec<u8>>, TemplateError> {
    validate(templates)?;
    let mut env = environment();
    let (ctx, weight) = context(credentials, account, expires_at);
    env.set_fuel(Some(fuel_for(weight)));
    BUDGET.with(|b| b.set((WORK, Some(std::time::Instant::now() + RENDER_DEADLINE))));
    let out = render_all(&env, templates, &ctx);
    BUDGET.with(|b| b.set((u64::MAX, None)));
    out
}

fn render_all(
    env: &Environment<'static>,
    templates: &BTreeMap<String, String>,
    ctx: &Value,
) -> Result<BTreeMap<String, Vec<u8>>, TemplateError> {
    let mut left = MAX_SECRET_DATA_BYTES;
    let mut data = BTreeMap::new();
    for (key, source) in templates {
        let fail = |e: Error| TemplateError {
            key: key.clone(),
            message: describe(&e),
        };
        let tmpl = env.template_from_str(source).map_err(fail)?;
        let mut w = Capped {
            out: Vec::new(),
            left: &mut left,
        };
        tmpl.render_captured_to(ctx, &mut w).map_err(fail)?;
        data.insert(key.clone(), w.out);
    }
    Ok(data)
}

/// Without a template: every credential field becomes one key; strings verbatim, other JSON values as compact
/// JSON. A null field keeps the value `previous` holds for it (a field that was present must not vanish or go
/// blank), or is left out. Fields whose names are not valid Secret keys are skipped and returned for logging.
pub fn raw_data(
    credentials: &Credentials,
    previous: Option<&BTreeMap<String, Vec<u8>>>,
) -> (BTreeMap<String, Vec<u8>>, Vec<String>) {
    let mut data = BTreeMap::new();
    let mut skipped = Vec::new();
    for (k, v) in &credentials.expose() {
        if !is_valid_secret_key(k) {
            skipped.push(k.clone());
            continue;
        }
        let value = match v {
            Json::Null => match previous.and_then(|p| p.get(k)) {
                Some(old) => old.clone(),
                None => continue,
            },
            Json::String(s) => s.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        };
        data.insert(k.clone(), value);
    }
    (data, skipped)
}

/// Kubernetes Secret key syntax, exactly as the API server checks it: `[-._a-zA-Z0-9]+`, at most 253 characters,
/// and not `.`, `..` or starting with `..`.
pub fn is_valid_secret_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && !k.starts_with("..")
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests;
