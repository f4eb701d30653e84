//! Terminal output: tables and colours.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Attribute, Cell, CellAlignment, Color, ContentArrangement, Table};

pub fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(
            headers
                .iter()
                .map(|h| Cell::new(h).add_attribute(Attribute::Bold).fg(Color::Cyan)),
        );
    t
}

/// A right-aligned cell (numbers).
pub fn num(s: impl ToString) -> Cell {
    Cell::new(s.to_string()).set_alignment(CellAlignment::Right)
}

pub fn title(s: &str) {
    println!("\n\x1b[1;36m== {s} ==\x1b[0m");
}

pub fn note(s: &str) {
    println!("\x1b[2m{s}\x1b[0m");
}
