//! Aligned plain-text tables: a header row in capitals, columns padded to
//! their widest cell and separated by two spaces, no trailing blanks.

/// A table being filled row by row.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new<I, S>(header: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells are blank, extra ones are dropped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut row: Vec<String> = cells
            .into_iter()
            .map(Into::into)
            .take(self.header.len())
            .collect();
        row.resize(self.header.len(), String::new());
        self.rows.push(row);
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, each ending in `\n`.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|col| {
                std::iter::once(&self.header)
                    .chain(&self.rows)
                    .map(|row| width(&row[col]))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (col, cell) in row.iter().enumerate() {
                if col > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[col].saturating_sub(width(cell));
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Display width of `text`, one column per character (what the agent
/// returns is ASCII but for metadata).
fn width(text: &str) -> usize {
    text.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_to_their_widest_cell() {
        let mut table = Table::new(["ID", "STATE", "METADATA"]);
        table.row(["a1", "running", "team=blue"]);
        table.row(["b2c3d4", "paused", ""]);

        let text = table.render();

        assert_eq!(
            text,
            "ID      STATE    METADATA\n\
             a1      running  team=blue\n\
             b2c3d4  paused\n"
        );
    }

    #[test]
    fn short_rows_are_padded_and_long_rows_cut() {
        let mut table = Table::new(["A", "B"]);
        table.row(["1"]);
        table.row(["2", "x", "dropped"]);

        let text = table.render();

        assert_eq!(text, "A  B\n1\n2  x\n");
    }

    #[test]
    fn non_ascii_cells_count_characters() {
        let mut table = Table::new(["K", "V"]);
        table.row(["é", "1"]);

        let text = table.render();

        assert_eq!(text, "K  V\né  1\n");
    }
}
