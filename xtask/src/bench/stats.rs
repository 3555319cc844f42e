//! Figures over rounds, and how they are shown: spreads, medians, grouped digits, tables.

/// Min, median and max of a measure over the rounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no samples.
    #[must_use]
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            min: *sorted.first()?,
            median: median(&sorted)?,
            max: *sorted.last()?,
        })
    }

    /// `min / median / max` with `decimals` digits.
    #[must_use]
    pub fn show(&self, decimals: usize) -> String {
        format!(
            "{:.decimals$} / {:.decimals$} / {:.decimals$}",
            self.min, self.median, self.max
        )
    }
}

/// The median of `samples` (the mean of the middle two for an even count).
#[must_use]
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some(f64::midpoint(sorted[mid - 1], sorted[mid])),
    }
}

/// The median of `samples` with `decimals` digits, `–` for none.
pub fn fixed(samples: &[f64], decimals: usize) -> String {
    median(samples).map_or_else(|| "–".into(), |m| format!("{m:.decimals$}"))
}

/// `102004` → `102 004`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// A markdown table; its text reads as a table on a terminal too (the columns are padded).
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    #[must_use]
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|&h| h.to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    #[must_use]
    pub fn markdown(&self) -> String {
        let width = |col: usize| {
            std::iter::once(&self.headers)
                .chain(&self.rows)
                .filter_map(|row| row.get(col))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
                .max(3)
        };
        let widths: Vec<usize> = (0..self.headers.len()).map(width).collect();
        let line = |cells: &[String]| {
            let padded: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(i, &w)| {
                    let cell = cells.get(i).map_or("", String::as_str);
                    format!(
                        "{cell}{}",
                        " ".repeat(w.saturating_sub(cell.chars().count()))
                    )
                })
                .collect();
            format!("| {} |\n", padded.join(" | "))
        };
        let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
        let mut out = line(&self.headers);
        out.push_str(&line(&rule));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let spread = Spread::of(&[5.0, 1.0, 3.0]).expect("three samples");
        assert_eq!(spread.show(1), "1.0 / 3.0 / 5.0");
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(grouped(7), "7");
        assert_eq!(grouped(1000), "1 000");
        assert_eq!(grouped(102_004), "102 004");
    }

    #[test]
    fn tables_are_padded_markdown() {
        let mut table = Table::new(&["a", "long header"]);
        table.row(vec!["≈ 10".into(), "x".into()]);
        assert_eq!(
            table.markdown(),
            "| a    | long header |\n| ---- | ----------- |\n| ≈ 10 | x           |\n"
        );
    }
}
