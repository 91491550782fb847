//! TypeScript to JavaScript inside the binary: type annotations, interfaces,
//! `import type`, `satisfies`, `as` and the like are blanked out with
//! whitespace (swc's strip-only mode, the one Node.js uses for
//! `--experimental-strip-types`), so every line and column of the output is
//! the line and column of the `.ts` file: a syntax error, a stack trace or a
//! dead letter names the user's own file:line with no source map.
//!
//! Strip-only means no code generation: TypeScript that needs it (`enum`,
//! `namespace`, parameter properties, `import x = require()`) is refused at
//! load time with the file:line and a note saying why.

use std::fmt;
use std::sync::{Arc, Mutex};

use swc_common::errors::{DiagnosticBuilder, Emitter, Handler};
use swc_common::sync::Lrc;
use swc_common::{SourceMap, GLOBALS};

/// A syntax or strip error at a place in a file.
#[derive(Debug, Clone, PartialEq)]
pub struct StripError {
    /// 1-based line of the first error.
    pub line: usize,
    /// 1-based column of the first error.
    pub column: usize,
    /// What is wrong there.
    pub message: String,
}

impl fmt::Display for StripError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// Collects the diagnostics swc reports, with their positions.
struct Collect {
    cm: Lrc<SourceMap>,
    errors: Arc<Mutex<Vec<StripError>>>,
}

impl Emitter for Collect {
    fn emit(&mut self, db: &mut DiagnosticBuilder<'_>) {
        let (line, column) = db
            .span
            .primary_span()
            .map(|span| {
                let loc = self.cm.lookup_char_pos(span.lo);
                (loc.line, loc.col_display + 1)
            })
            .unwrap_or((1, 1));
        let mut message = db.message();
        if db.code.as_ref().is_some_and(
            |c| matches!(c, swc_common::errors::DiagnosticId::Error(e) if e == "UnsupportedSyntax"),
        ) {
            message.push_str(
                " (dynbulk strips types only and generates no code: use a const object \
                 instead of an enum or namespace, plain fields instead of parameter properties)",
            );
        }
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(StripError {
                line,
                column,
                message,
            });
    }
}

/// The JavaScript of the TypeScript module `source`, with every position kept.
///
/// # Errors
/// The first syntax error, or the first TypeScript construct that needs code
/// generation, with its line and column.
pub fn strip(file_name: &str, source: &str) -> Result<String, StripError> {
    let cm: Lrc<SourceMap> = Default::default();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let handler = Handler::with_emitter(
        true,
        false,
        Box::new(Collect {
            cm: cm.clone(),
            errors: errors.clone(),
        }),
    );
    let options = swc_ts_fast_strip::Options {
        module: Some(true),
        filename: Some(file_name.to_owned()),
        mode: swc_ts_fast_strip::Mode::StripOnly,
        deprecated_ts_module_as_error: Some(true),
        ..Default::default()
    };
    let result = GLOBALS.set(&Default::default(), || {
        swc_ts_fast_strip::operate(&cm, &handler, source.to_owned(), options)
    });
    match result {
        Ok(out) => Ok(out.code),
        Err(e) => {
            let mut errors = errors.lock().unwrap_or_else(|p| p.into_inner());
            errors.sort_by_key(|e| (e.line, e.column));
            Err(errors.first().cloned().unwrap_or(StripError {
                line: 1,
                column: 1,
                message: e.message,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_become_whitespace_and_lines_stay_put() {
        let ts = "interface A { x: number }\nconst a: number = 1 as number;\nexport default { a } satisfies object;\nthrow new Error('line 4');\n";
        let js = strip("m.ts", ts).unwrap();
        assert_eq!(js.lines().count(), ts.lines().count());
        assert!(!js.contains("interface") && !js.contains("satisfies"));
        assert_eq!(js.lines().nth(3), ts.lines().nth(3));
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let e = strip("m.ts", "const a = 1;\n\nconst b = ;\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
    }

    #[test]
    fn an_enum_is_refused_as_not_type_strip_only() {
        let e = strip("m.ts", "const a = 1;\nenum Color { Red }\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("strips types only"), "{e}");
    }
}
