//! Table and column names as RudderStack's warehouse transformer makes them
//! (`rudder-transformer: src/warehouse/v1/util.js` `transformName`, `safeColumnName`,
//! `safeTableName`; `src/warehouse/index.js` `excludeRudderCreatedTableNames`):
//!
//! 1. Keep the runs of ASCII letters and digits, join them with `_` (so `$ai_generation` →
//!    `ai_generation`, `tool.used` → `tool_used`, `Cízǔ` → `C_z`).
//! 2. `lodash.snakeCase` the result: words split at case changes and between letters and
//!    digits, lowercased, joined with `_` (`CamelCase123Key` → `camel_case_123_key`,
//!    `omega v2` → `omega_v_2`, `HTTPServer` → `http_server`, `4th` stays one word).
//! 3. Leading underscores of the original name are kept (`_user_id` → `_user_id`).
//! 4. A name starting with a digit gets a `_` prefix (`123abc` → `_123_abc`).
//! 5. Per warehouse ([`Dialect`]): a reserved keyword gets a `_` prefix (`order` → `_order`),
//!    Snowflake names are uppercased, others lowercased; PostgreSQL truncates to 63 bytes,
//!    Snowflake/BigQuery/ClickHouse to 127, the lake does not truncate.
//!
//! Different names can collide (`tool.used`, `tool_used` and `Tool Used` are all `tool_used`):
//! RudderStack writes them to the same table or column, and so do we.
//! Event tables named like a table RudderStack creates (`tracks`, `pages`, `screens`,
//! `aliases`, `groups`, `accounts`, `users`, `identifies`) get a `_` prefix, and so do the
//! platform's own tables here (`event_logs`, `model_cost_logs`, `agent_trace_history`,
//! `rudder_discards`) — the last four are our addition.

/// The warehouse a name is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    #[default]
    Postgres,
    Snowflake,
    BigQuery,
    ClickHouse,
    /// The embedded Parquet lake: lowercase, PostgreSQL's keywords escaped, no truncation.
    Lake,
}

impl Dialect {
    /// The longest name, in bytes (names are ASCII by then).
    pub fn max_name_len(self) -> Option<usize> {
        match self {
            Dialect::Postgres => Some(63),
            Dialect::Snowflake | Dialect::BigQuery | Dialect::ClickHouse => Some(127),
            Dialect::Lake => None,
        }
    }

    fn reserved(self) -> &'static [&'static str] {
        match self {
            Dialect::BigQuery => BIGQUERY_RESERVED,
            // RudderStack's list for PostgreSQL; Snowflake's and ClickHouse's own lists were not
            // copied (a guess: PostgreSQL's list is used for them and for the lake).
            _ => POSTGRES_RESERVED,
        }
    }

    /// Whether `name` (any case) is a reserved keyword here.
    pub fn is_reserved(self, name: &str) -> bool {
        let upper = name.to_ascii_uppercase();
        self.reserved().binary_search(&upper.as_str()).is_ok()
    }
}

/// Tables RudderStack creates itself: an event of that name gets a `_` prefix.
pub const RUDDER_TABLES: &[&str] = &["tracks", "pages", "screens", "aliases", "groups", "accounts", "users", "identifies"];
/// The platform's tables and the discards table, kept apart from event tables the same way.
pub const PLATFORM_TABLES: &[&str] = &["event_logs", "model_cost_logs", "agent_trace_history", "agent_trace_events", "rudder_discards"];

/// RudderStack's `transformName`: steps 1–4 above, before the warehouse's rules.
pub fn transform_name(name: &str) -> String {
    let mut runs: Vec<&str> = Vec::new();
    for run in name.split(|c: char| !c.is_ascii_alphanumeric()) {
        if !run.is_empty() {
            runs.push(run);
        }
    }
    let joined = runs.join("_");
    let leading: String = name.chars().take_while(|&c| c == '_').collect();
    let mut key = leading + &snake_case(&joined);
    if key.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        key.insert(0, '_');
    }
    key
}

/// A column name from a property path already joined with `_` (`context_traits_firstName`).
/// `None` when nothing of the name is left (`$`, `中文`).
pub fn column_name(dialect: Dialect, name: &str) -> Option<String> {
    let key = transform_name(name);
    if key.is_empty() {
        return None;
    }
    Some(safe_name(dialect, key))
}

/// A table name from a track event's name, with RudderStack's own tables (and ours) escaped.
/// `None` when nothing of the name is left.
pub fn table_name(dialect: Dialect, event: &str) -> Option<String> {
    let key = transform_name(event);
    if key.is_empty() {
        return None;
    }
    let mut name = safe_name(dialect, key);
    let lower = name.to_ascii_lowercase();
    if RUDDER_TABLES.contains(&lower.as_str()) || PLATFORM_TABLES.contains(&lower.as_str()) {
        name.insert(0, '_');
    }
    Some(name)
}

/// RudderStack's `safeColumnName`/`safeTableName` on a transformed name: reserved keywords
/// prefixed with `_`, the warehouse's case, truncation.
pub fn safe_name(dialect: Dialect, mut name: String) -> String {
    if dialect.is_reserved(&name) {
        name.insert(0, '_');
    }
    if dialect == Dialect::Snowflake {
        name.make_ascii_uppercase();
    } else {
        name.make_ascii_lowercase();
    }
    if let Some(max) = dialect.max_name_len() {
        // ASCII by now: any byte is a character boundary.
        name.truncate(max);
    }
    name
}

/// `lodash.snakeCase` on an ASCII string of letters, digits and `_`: lodash's `unicodeWords`
/// patterns, tried in order at each position, the words lowercased and joined with `_`.
pub fn snake_case(s: &str) -> String {
    let b = s.as_bytes();
    let mut words: Vec<String> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match word_at(b, i) {
            Some(end) => {
                words.push(s[i..end].to_ascii_lowercase());
                i = end;
            }
            None => i += 1,
        }
    }
    words.join("_")
}

/// The end of the lodash word starting at `i`, if one starts there.
fn word_at(b: &[u8], i: usize) -> Option<usize> {
    let upper = |j: usize| b.get(j).is_some_and(u8::is_ascii_uppercase);
    let lower = |j: usize| b.get(j).is_some_and(u8::is_ascii_lowercase);
    let digit = |j: usize| b.get(j).is_some_and(u8::is_ascii_digit);
    // In this alphabet only `_` is a break character.
    let brk = |j: usize| b.get(j) == Some(&b'_');
    let end = |j: usize| j >= b.len();
    let run = |mut j: usize, f: &dyn Fn(usize) -> bool| {
        while f(j) {
            j += 1;
        }
        j
    };
    // 1. [A-Z]?[a-z]+(?=break|[A-Z]|$)  and  3. [A-Z]?[a-z]+
    {
        let start = if upper(i) { i + 1 } else { i };
        let stop = run(start, &lower);
        if stop > start {
            return Some(stop);
        }
    }
    // 2. [A-Z]+(?=break|[A-Z][a-z]|$), backtracking over the run of capitals.
    if upper(i) {
        let stop = run(i, &upper);
        for j in (i + 1..=stop).rev() {
            if brk(j) || end(j) || (upper(j) && lower(j + 1)) {
                return Some(j);
            }
        }
        // 4. [A-Z]+
        return Some(stop);
    }
    if digit(i) {
        // 5./6. Ordinals: \d*(?:1st|2nd|3rd|(?![123])\dth), lowercase followed by a boundary,
        // `_` or a capital; uppercase followed by a boundary, `_` or a lowercase letter.
        let digits_end = run(i, &digit);
        for upper_case in [true, false] {
            for last in (i..digits_end).rev() {
                let suffix: &[u8] = match (b[last], upper_case) {
                    (b'1', false) => b"st",
                    (b'2', false) => b"nd",
                    (b'3', false) => b"rd",
                    (_, false) => b"th",
                    (b'1', true) => b"ST",
                    (b'2', true) => b"ND",
                    (b'3', true) => b"RD",
                    (_, true) => b"TH",
                };
                if last + 1 != digits_end {
                    continue;
                }
                let stop = last + 1 + suffix.len();
                if b.get(last + 1..stop) != Some(suffix) {
                    continue;
                }
                let after_ok = end(stop) || brk(stop) || if upper_case { lower(stop) } else { upper(stop) };
                if after_ok {
                    return Some(stop);
                }
            }
        }
        // 7. \d+
        return Some(digits_end);
    }
    None
}

/// RudderStack's reserved keywords for PostgreSQL (`ReservedKeywords.json`, `POSTGRES`), sorted.
const POSTGRES_RESERVED: &[&str] = &[
    "ALL",
    "ANALYSE",
    "ANALYZE",
    "AND",
    "ANY",
    "ARRAY",
    "AS",
    "ASC",
    "ASYMMETRIC",
    "AUTHORIZATION",
    "BETWEEN",
    "BINARY",
    "BOTH",
    "CASE",
    "CAST",
    "CHECK",
    "COLLATE",
    "COLUMN",
    "CONSTRAINT",
    "CREATE",
    "CROSS",
    "CURRENT_DATE",
    "CURRENT_ROLE",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "CURRENT_USER",
    "DEFAULT",
    "DEFERRABLE",
    "DESC",
    "DISTINCT",
    "DO",
    "ELSE",
    "END",
    "EXCEPT",
    "FALSE",
    "FOR",
    "FOREIGN",
    "FREEZE",
    "FROM",
    "FULL",
    "GRANT",
    "GROUP",
    "HAVING",
    "ILIKE",
    "IN",
    "INITIALLY",
    "INNER",
    "INTERSECT",
    "INTO",
    "IS",
    "ISNULL",
    "JOIN",
    "LEADING",
    "LEFT",
    "LIKE",
    "LIMIT",
    "LOCALTIME",
    "LOCALTIMESTAMP",
    "NATURAL",
    "NEW",
    "NOT",
    "NOTNULL",
    "NULL",
    "OFF",
    "OFFSET",
    "OLD",
    "ON",
    "ONLY",
    "OR",
    "ORDER",
    "OUTER",
    "OVERLAPS",
    "PLACING",
    "PRIMARY",
    "REFERENCES",
    "RIGHT",
    "SELECT",
    "SESSION_USER",
    "SIMILAR",
    "SOME",
    "SYMMETRIC",
    "TABLE",
    "THEN",
    "TO",
    "TRAILING",
    "TRUE",
    "UNION",
    "UNIQUE",
    "USER",
    "USING",
    "VERBOSE",
    "WHEN",
    "WHERE",
];

/// RudderStack's reserved keywords for BigQuery (`ReservedKeywords.json`, `BQ`), sorted.
const BIGQUERY_RESERVED: &[&str] = &[
    "ALL",
    "AND",
    "ANY",
    "ARRAY",
    "AS",
    "ASC",
    "ASSERT_ROWS_MODIFIED",
    "AT",
    "BETWEEN",
    "BY",
    "CASE",
    "CAST",
    "COLLATE",
    "CONTAINS",
    "CREATE",
    "CROSS",
    "CUBE",
    "CURRENT",
    "DEFAULT",
    "DEFINE",
    "DESC",
    "DISTINCT",
    "ELSE",
    "END",
    "ENUM",
    "ESCAPE",
    "EXCEPT",
    "EXCLUDE",
    "EXISTS",
    "EXTRACT",
    "FALSE",
    "FETCH",
    "FOLLOWING",
    "FOR",
    "FROM",
    "FULL",
    "GROUP",
    "GROUPING",
    "GROUPS",
    "HASH",
    "HAVING",
    "IF",
    "IGNORE",
    "IN",
    "INNER",
    "INTERSECT",
    "INTERVAL",
    "INTO",
    "IS",
    "JOIN",
    "LATERAL",
    "LEFT",
    "LIKE",
    "LIMIT",
    "LOOKUP",
    "MERGE",
    "NATURAL",
    "NEW",
    "NO",
    "NOT",
    "NULL",
    "NULLS",
    "OF",
    "ON",
    "OR",
    "ORDER",
    "OUTER",
    "OVER",
    "PARTITION",
    "PRECEDING",
    "PROTO",
    "RANGE",
    "RECURSIVE",
    "RESPECT",
    "RIGHT",
    "ROLLUP",
    "ROWS",
    "SELECT",
    "SET",
    "SOME",
    "STRUCT",
    "TABLESAMPLE",
    "THEN",
    "TO",
    "TREAT",
    "TRUE",
    "UNBOUNDED",
    "UNION",
    "UNNEST",
    "USING",
    "WHEN",
    "WHERE",
    "WINDOW",
    "WITH",
    "WITHIN",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_lists_are_sorted_for_binary_search() {
        for list in [POSTGRES_RESERVED, BIGQUERY_RESERVED] {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "{list:?}");
        }
    }

    #[test]
    fn names_are_transformed_as_rudderstack_does() {
        let cases = [
            ("Flow Executed", "flow_executed"),
            ("flow_executed", "flow_executed"),
            ("$ai_generation", "ai_generation"),
            ("tool.used", "tool_used"),
            ("123abc", "_123_abc"),
            ("9mega", "_9_mega"),
            ("CamelCase123Key", "camel_case_123_key"),
            ("omega v2", "omega_v_2"),
            ("Cízǔ", "c_z"),
            ("HTTPServer", "http_server"),
            ("userID", "user_id"),
            ("ABC", "abc"),
            ("_user_id", "_user_id"),
            ("__private", "__private"),
            ("top 4th", "top_4th"),
            ("11th", "_11_th"),
            ("context_traits_firstName", "context_traits_first_name"),
            ("gen_ai.usage.input_tokens", "gen_ai_usage_input_tokens"),
            ("$feature/new-checkout", "feature_new_checkout"),
            ("中文", ""),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(transform_name(input), expected, "{input:?}");
        }
    }

    #[test]
    fn reserved_words_case_and_length_follow_the_warehouse() {
        assert_eq!(column_name(Dialect::Postgres, "order").as_deref(), Some("_order"));
        assert_eq!(column_name(Dialect::Postgres, "Order").as_deref(), Some("_order"));
        assert_eq!(column_name(Dialect::Postgres, "limit").as_deref(), Some("_limit"));
        assert_eq!(column_name(Dialect::BigQuery, "rows").as_deref(), Some("_rows"));
        assert_eq!(column_name(Dialect::Postgres, "rows").as_deref(), Some("rows"), "reserved in BigQuery only");
        assert_eq!(column_name(Dialect::Snowflake, "firstName").as_deref(), Some("FIRST_NAME"));
        assert_eq!(column_name(Dialect::Postgres, "$").as_deref(), None);
        let long = "a".repeat(200);
        assert_eq!(column_name(Dialect::Postgres, &long).unwrap().len(), 63);
        assert_eq!(column_name(Dialect::BigQuery, &long).unwrap().len(), 127);
        assert_eq!(column_name(Dialect::Lake, &long).unwrap().len(), 200);
    }

    #[test]
    fn event_tables_never_take_the_name_of_a_table_we_create() {
        assert_eq!(table_name(Dialect::Postgres, "Flow Executed").as_deref(), Some("flow_executed"));
        assert_eq!(table_name(Dialect::Postgres, "users").as_deref(), Some("_users"));
        assert_eq!(table_name(Dialect::Postgres, "Tracks").as_deref(), Some("_tracks"));
        assert_eq!(table_name(Dialect::Postgres, "event logs").as_deref(), Some("_event_logs"));
        assert_eq!(table_name(Dialect::Postgres, "$pageview").as_deref(), Some("pageview"));
        assert_eq!(table_name(Dialect::Postgres, "order").as_deref(), Some("_order"));
        assert_eq!(table_name(Dialect::Postgres, "🎉"), None);
        // Collisions: one table, as in RudderStack.
        let names: Vec<_> = ["tool.used", "tool_used", "Tool Used", "toolUsed", "$tool-used"]
            .iter()
            .map(|n| table_name(Dialect::Postgres, n))
            .collect();
        assert!(names.iter().all(|n| n.as_deref() == Some("tool_used")), "{names:?}");
    }
}
