//! Just enough of GraphQL's syntax for fakes: the root field of a one-field document and the
//! arguments of a named field, with `$variables` resolved from the request.
//!
//! Fakes answer a fixed shape per operation instead of evaluating selections, so this reads no
//! more of a document than which operation it is and which arguments it was given.

use serde_json::{Map, Value};

/// An argument as written: a `$variable` or a literal (`500`, `"x"`, `true`).
#[derive(Debug, Clone, PartialEq)]
pub enum ArgValue {
    Variable(String),
    Literal(String),
}

/// The first root field of an operation.
#[derive(Debug, Clone, PartialEq)]
pub struct RootField {
    pub mutation: bool,
    pub alias: Option<String>,
    pub name: String,
    pub args: Vec<(String, ArgValue)>,
}

impl RootField {
    /// The key the answer goes under: the alias when there is one.
    pub fn response_key(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.name)
    }
}

struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, at: 0 }
    }

    fn peek(&self) -> Option<char> {
        self.text[self.at..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, want: char) -> bool {
        if self.peek() == Some(want) {
            self.at += want.len_utf8();
            true
        } else {
            false
        }
    }

    /// Whitespace, commas (insignificant in GraphQL), a byte-order mark and `#` comments.
    fn skip_ignored(&mut self) {
        while let Some(c) = self.peek() {
            match c {
                c if c.is_whitespace() || c == ',' || c == '\u{feff}' => {
                    self.bump();
                }
                '#' => {
                    while let Some(c) = self.bump() {
                        if c == '\n' {
                            break;
                        }
                    }
                }
                _ => break,
            }
        }
    }

    fn name(&mut self) -> Option<&'a str> {
        let start = self.at;
        match self.peek() {
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
            _ => return None,
        }
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            self.bump();
        }
        Some(&self.text[start..self.at])
    }

    fn expect_name(&mut self) -> Result<&'a str, String> {
        self.name()
            .ok_or_else(|| format!("Syntax Error: expected a name at offset {}", self.at))
    }

    /// Skips a string literal, the opening quote already seen.
    fn skip_string(&mut self) -> Result<(), String> {
        while let Some(c) = self.bump() {
            match c {
                '\\' => {
                    self.bump();
                }
                '"' => return Ok(()),
                _ => {}
            }
        }
        Err("Syntax Error: unterminated string".into())
    }

    /// Skips from an opening bracket to its match, strings included.
    fn skip_balanced(&mut self, open: char, close: char) -> Result<(), String> {
        if !self.eat(open) {
            return Err(format!("Syntax Error: expected {open:?}"));
        }
        let mut depth = 1;
        while let Some(c) = self.bump() {
            match c {
                '"' => self.skip_string()?,
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
        Err(format!("Syntax Error: unbalanced {open:?}"))
    }

    /// `(name: value, ...)`, the scanner at the opening parenthesis.
    fn args(&mut self) -> Result<Vec<(String, ArgValue)>, String> {
        let mut args = Vec::new();
        if !self.eat('(') {
            return Ok(args);
        }
        loop {
            self.skip_ignored();
            if self.eat(')') {
                return Ok(args);
            }
            let name = self.expect_name()?.to_string();
            self.skip_ignored();
            if !self.eat(':') {
                return Err(format!("Syntax Error: expected ':' after argument {name}"));
            }
            self.skip_ignored();
            let value = if self.eat('$') {
                ArgValue::Variable(self.expect_name()?.to_string())
            } else {
                let start = self.at;
                match self.peek() {
                    Some('"') => {
                        self.bump();
                        self.skip_string()?;
                    }
                    Some('[') => self.skip_balanced('[', ']')?,
                    Some('{') => self.skip_balanced('{', '}')?,
                    _ => {
                        while self.peek().is_some_and(|c| {
                            !(c.is_whitespace() || c == ',' || c == ')' || c == '#')
                        }) {
                            self.bump();
                        }
                    }
                }
                if start == self.at {
                    return Err(format!("Syntax Error: expected a value for {name}"));
                }
                ArgValue::Literal(self.text[start..self.at].to_string())
            };
            args.push((name, value));
        }
    }
}

/// The first field of the document's operation (the fakes' clients send one per document).
pub fn root_field(query: &str) -> Result<RootField, String> {
    let mut s = Scanner::new(query);
    s.skip_ignored();
    let mut mutation = false;
    if !s.eat('{') {
        match s.expect_name()? {
            "query" => {}
            "mutation" => mutation = true,
            other => return Err(format!("Syntax Error: unexpected {other:?}")),
        }
        s.skip_ignored();
        s.name();
        s.skip_ignored();
        if s.peek() == Some('(') {
            s.skip_balanced('(', ')')?;
        }
        s.skip_ignored();
        if !s.eat('{') {
            return Err("Syntax Error: expected '{'".into());
        }
    }
    s.skip_ignored();
    let first = s.expect_name()?;
    s.skip_ignored();
    let (alias, name) = if s.eat(':') {
        s.skip_ignored();
        (Some(first.to_string()), s.expect_name()?)
    } else {
        (None, first)
    };
    s.skip_ignored();
    let args = s.args()?;
    Ok(RootField {
        mutation,
        alias,
        name: name.to_string(),
        args,
    })
}

/// The arguments of the first occurrence of `field` anywhere in the document (`Some(vec![])`
/// when it is there without any), for nested connections such as `services(first: 2)`.
pub fn field_args(query: &str, field: &str) -> Result<Option<Vec<(String, ArgValue)>>, String> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$';
    let mut from = 0;
    while let Some(found) = query[from..].find(field) {
        let start = from + found;
        let end = start + field.len();
        from = end;
        let before_ok = !query[..start].chars().next_back().is_some_and(is_name_char);
        let after_ok = !query[end..].chars().next().is_some_and(is_name_char);
        if !(before_ok && after_ok) {
            continue;
        }
        let mut s = Scanner::new(query);
        s.at = end;
        s.skip_ignored();
        return s.args().map(Some);
    }
    Ok(None)
}

/// Arguments with their variables looked up; literals read as JSON where they are JSON, and
/// as strings otherwise (enum values). A variable that was not sent is `null`, as in GraphQL.
pub fn resolve(
    args: &[(String, ArgValue)],
    variables: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (name, value) in args {
        let value = match value {
            ArgValue::Variable(var) => variables.get(var).cloned().unwrap_or(Value::Null),
            ArgValue::Literal(raw) => match serde_json::from_str(raw) {
                Ok(value) => value,
                Err(_) if raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                    Value::String(raw.clone())
                }
                Err(_) => {
                    return Err(format!(
                    "argument {name}: literal {raw} is not supported by the fake; pass a variable"
                ))
                }
            },
        };
        out.insert(name.clone(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_root_field_and_its_arguments() {
        let root = root_field(
            "mutation($input: ServiceCreateInput!) { serviceCreate(input: $input) { id name } }",
        )
        .unwrap();
        assert!(root.mutation);
        assert_eq!(root.name, "serviceCreate");
        assert_eq!(
            root.args,
            vec![("input".into(), ArgValue::Variable("input".into()))]
        );

        let root = root_field("# hi\nquery Fleet { a: project(id: \"p\") { id } }").unwrap();
        assert!(!root.mutation);
        assert_eq!(root.response_key(), "a");
        assert_eq!(root.name, "project");

        let root = root_field("{ me { id } }").unwrap();
        assert_eq!(root.name, "me");
        assert!(root.args.is_empty());
    }

    #[test]
    fn finds_nested_connection_arguments() {
        let query = "query($id: String!, $after: String) { project(id: $id) { services(first: 500, after: $after) { edges { node { deployments(first: 1) { edges { node { id } } } } } } } }";
        let args = field_args(query, "services").unwrap().unwrap();
        let vars = json!({"after": "c1"});
        let resolved = resolve(&args, vars.as_object().unwrap()).unwrap();
        assert_eq!(resolved["first"], json!(500));
        assert_eq!(resolved["after"], json!("c1"));
        assert_eq!(field_args(query, "projects").unwrap(), None);
        // `serviceInstances` is not `services`.
        assert_eq!(
            field_args("{ serviceInstances { x } services { y } }", "services").unwrap(),
            Some(vec![])
        );
    }
}
