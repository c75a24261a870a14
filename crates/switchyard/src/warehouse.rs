//! `switchyard sql` and `switchyard warehouse`: the warehouse through the server's API.

use anyhow::Context as _;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use crate::api;

/// How `switchyard sql` prints an answer.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a header, for people.
    Table,
    /// The API's answer as it is: `{"columns", "types", "results"}`.
    Json,
}

/// Runs a query through `POST /api/projects/@current/query` and prints its answer.
pub fn run_sql(url: &str, secret: Option<String>, query: &str, format: Format) -> anyhow::Result<()> {
    let secret = secret.context("the secret key is needed: --secret-key or SWITCHYARD_SECRET_KEY")?;
    let endpoint = format!("{}/api/projects/@current/query", url.trim_end_matches('/'));
    let answer = api(Method::POST, &endpoint, &secret, Some(json!({"query": query}).to_string()))?;
    match format {
        Format::Json => println!("{answer}"),
        Format::Table => print!("{}", table(&answer)),
    }
    Ok(())
}

/// A cell as text: strings as they are, NULL as `NULL`, anything else as JSON.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The answer as aligned columns (numbers right-aligned), then the row count.
pub fn table(answer: &Value) -> String {
    let columns: Vec<String> = answer["columns"].as_array().into_iter().flatten().map(cell).collect();
    let types: Vec<&str> = answer["types"].as_array().into_iter().flatten().map(|t| t.as_str().unwrap_or("")).collect();
    let rows: Vec<Vec<String>> = answer["results"].as_array().into_iter().flatten().map(|r| r.as_array().into_iter().flatten().map(cell).collect()).collect();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in &rows {
        for (w, v) in widths.iter_mut().zip(row) {
            *w = (*w).max(v.chars().count());
        }
    }
    let numeric = |i: usize| types.get(i).is_some_and(|t| *t == "int" || *t == "float" || t.starts_with("decimal"));
    let line = |values: &[String]| {
        let cells: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| if numeric(i) { format!("{v:>w$}", w = widths[i]) } else { format!("{v:<w$}", w = widths[i]) })
            .collect();
        format!("{}\n", cells.join(" | ").trim_end())
    };
    let mut out = line(&columns);
    out.push_str(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-"));
    out.push('\n');
    for row in &rows {
        out.push_str(&line(row));
    }
    out.push_str(&format!("({} row{})\n", rows.len(), if rows.len() == 1 { "" } else { "s" }));
    out
}

#[derive(Subcommand)]
pub enum WarehouseAction {
    /// Each warehouse's loader: events loaded, lag behind the log, last load, last error.
    Status,
    /// The project's PostgreSQL warehouses (passwords masked).
    List,
    /// Adds a PostgreSQL warehouse: the loader creates the tables in `--schema` and loads
    /// every event of the project from the start of the log.
    Add {
        /// A name for it.
        #[arg(long)]
        name: String,
        /// `postgres://user:password@host:port/database`.
        #[arg(long)]
        dsn: String,
        /// The schema the tables go in.
        #[arg(long, default_value = "switchyard")]
        schema: String,
    },
    /// Removes a PostgreSQL warehouse (its loader stops; the tables stay).
    Remove { id: i64 },
}

pub fn run_warehouse(url: &str, secret: Option<String>, action: WarehouseAction) -> anyhow::Result<()> {
    let secret = secret.context("the secret key is needed: --secret-key or SWITCHYARD_SECRET_KEY")?;
    let base = format!("{}/api/projects/@current/warehouses", url.trim_end_matches('/'));
    match action {
        WarehouseAction::Status => {
            let status = api(Method::GET, &format!("{base}/status/"), &secret, None)?;
            for w in status["results"].as_array().into_iter().flatten() {
                println!(
                    "{:<16} loaded {:>10}  lag {:>8} events  last load {}  failures {}{}",
                    cell(&w["name"]),
                    cell(&w["loaded_events"]),
                    cell(&w["lag"]["events"]),
                    cell(&w["last_load_at"]),
                    cell(&w["failures"]),
                    w["last_error"].as_str().map(|e| format!("  last error: {e}")).unwrap_or_default()
                );
            }
        }
        WarehouseAction::List => {
            let list = api(Method::GET, &format!("{base}/"), &secret, None)?;
            for w in list["results"].as_array().into_iter().flatten() {
                println!("{w}");
            }
        }
        WarehouseAction::Add { name, dsn, schema } => {
            let body = json!({"name": name, "type": "postgres", "config": {"dsn": dsn, "schema": schema}});
            println!("{}", api(Method::POST, &format!("{base}/"), &secret, Some(body.to_string()))?);
        }
        WarehouseAction::Remove { id } => {
            api(Method::DELETE, &format!("{base}/{id}/"), &secret, None)?;
            println!("removed warehouse {id}");
        }
    }
    Ok(())
}
