//! PaddleOCR-VL's table output (OTSL) to HTML, as the PaddleX pipeline's
//! `convert_otsl_to_html` does it (MODEL_SPEC §6.4).
//!
//! OTSL writes a table row by row as a sequence of cell tags, each followed by its text:
//! - `<fcel>` a cell with content, `<ecel>` an empty cell: the cells that start a span;
//! - `<lcel>` "merged with the cell to the left" (a column span continues),
//! - `<ucel>` "merged with the cell above" (a row span continues),
//! - `<xcel>` both (the inside of a block spanning rows and columns);
//! - `<nl>` ends the row.
//!
//! A starting cell's colspan is one plus the run of `lcel`/`xcel` to its right, its rowspan one
//! plus the run of `ucel`/`xcel` below it. Short rows are padded with empty cells; a merge tag
//! with nothing to merge into (an `lcel` in the first column, say) becomes an empty cell, so
//! the table stays rectangular whatever the model emits. Cell text is HTML-escaped.

use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Full,
    Empty,
    Left,
    Up,
    Cross,
}

const TAGS: [(&str, Option<Kind>); 6] = [
    ("<fcel>", Some(Kind::Full)),
    ("<ecel>", Some(Kind::Empty)),
    ("<lcel>", Some(Kind::Left)),
    ("<ucel>", Some(Kind::Up)),
    ("<xcel>", Some(Kind::Cross)),
    ("<nl>", None),
];

struct Cell {
    kind: Kind,
    text: String,
}

/// Whether `text` holds any OTSL tag (the model's table answers do).
pub fn is_otsl(text: &str) -> bool {
    TAGS.iter().any(|(tag, _)| text.contains(tag))
}

/// The HTML table for an OTSL string; `None` when it holds no OTSL tag (the text is then not a
/// table and should be shown as it is).
pub fn otsl_to_html(otsl: &str) -> Option<String> {
    if !is_otsl(otsl) {
        return None;
    }
    let rows = parse(otsl);
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let kind = |r: usize, c: usize| {
        rows.get(r)
            .and_then(|row| row.get(c))
            .map_or(Kind::Empty, |cell| cell.kind)
    };

    // Which grid positions a span already covers, so they are not emitted again.
    let mut covered = vec![vec![false; width]; rows.len()];
    let mut html = String::from("<table>");
    for (r, row) in rows.iter().enumerate() {
        html.push_str("<tr>");
        for c in 0..width {
            if covered[r][c] {
                continue;
            }
            let (k, text) = match row.get(c) {
                Some(cell) => (cell.kind, cell.text.trim()),
                None => (Kind::Empty, ""),
            };
            if !matches!(k, Kind::Full | Kind::Empty) {
                // A merge tag with no starting cell to merge into.
                html.push_str("<td></td>");
                continue;
            }
            let colspan = 1
                + (c + 1..width)
                    .take_while(|&cc| matches!(kind(r, cc), Kind::Left | Kind::Cross))
                    .count();
            let rowspan = 1
                + (r + 1..rows.len())
                    .take_while(|&rr| matches!(kind(rr, c), Kind::Up | Kind::Cross))
                    .count();
            for row_cov in covered.iter_mut().skip(r).take(rowspan) {
                for cov in row_cov.iter_mut().skip(c).take(colspan) {
                    *cov = true;
                }
            }
            html.push_str("<td");
            if rowspan > 1 {
                let _ = write!(html, " rowspan=\"{rowspan}\"");
            }
            if colspan > 1 {
                let _ = write!(html, " colspan=\"{colspan}\"");
            }
            html.push('>');
            escape_into(&mut html, text);
            html.push_str("</td>");
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    Some(html)
}

/// Rows of cells; text after a cell tag belongs to that cell, text before a row's first tag is
/// dropped (it can only be whitespace or stray output).
fn parse(otsl: &str) -> Vec<Vec<Cell>> {
    let mut rows = Vec::new();
    let mut row: Vec<Cell> = Vec::new();
    let mut rest = otsl;
    while !rest.is_empty() {
        let tag = TAGS.iter().find(|(t, _)| rest.starts_with(t));
        match tag {
            Some((t, Some(kind))) => {
                row.push(Cell {
                    kind: *kind,
                    text: String::new(),
                });
                rest = &rest[t.len()..];
            }
            Some((t, None)) => {
                if !row.is_empty() {
                    rows.push(std::mem::take(&mut row));
                }
                rest = &rest[t.len()..];
            }
            None => {
                // Text up to the next possible tag ('<' that is not one is text too).
                let end = rest
                    .char_indices()
                    .skip(1)
                    .find(|&(_, c)| c == '<')
                    .map_or(rest.len(), |(i, _)| i);
                if let Some(cell) = row.last_mut() {
                    cell.text.push_str(&rest[..end]);
                }
                rest = &rest[end..];
            }
        }
    }
    if !row.is_empty() {
        rows.push(row);
    }
    rows
}

fn escape_into(out: &mut String, text: &str) {
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_grid() {
        let html = otsl_to_html("<fcel>Name<fcel>Qty<nl><fcel>apple<fcel>3<nl>").unwrap();
        assert_eq!(
            html,
            "<table><tr><td>Name</td><td>Qty</td></tr><tr><td>apple</td><td>3</td></tr></table>"
        );
    }

    #[test]
    fn spans() {
        // A header spanning two columns, a cell spanning two rows, and a 2x2 block.
        let otsl = "<fcel>H<lcel><fcel>X<lcel><nl>\
                    <fcel>a<fcel>b<ucel><xcel><nl>\
                    <ucel><ecel><fcel>c<fcel>d<nl>";
        let html = otsl_to_html(otsl).unwrap();
        assert_eq!(
            html,
            "<table>\
             <tr><td colspan=\"2\">H</td><td rowspan=\"2\" colspan=\"2\">X</td></tr>\
             <tr><td rowspan=\"2\">a</td><td>b</td></tr>\
             <tr><td></td><td>c</td><td>d</td></tr>\
             </table>"
        );
    }

    #[test]
    fn ragged_and_orphans_stay_rectangular() {
        let html = otsl_to_html("<lcel>x<fcel>a<nl><fcel>b<fcel>c<fcel>d<nl><ucel>").unwrap();
        // Row 0: orphan lcel, a, padding; row 2: the ucel extends b's rowspan.
        assert_eq!(
            html,
            "<table>\
             <tr><td></td><td>a</td><td></td></tr>\
             <tr><td rowspan=\"2\">b</td><td>c</td><td>d</td></tr>\
             <tr><td></td><td></td></tr>\
             </table>"
        );
    }

    #[test]
    fn text_is_escaped_and_trimmed_and_may_hold_angle_brackets() {
        let html = otsl_to_html("<fcel> a < b & c <fcel><b>x</b><nl>").unwrap();
        assert_eq!(
            html,
            "<table><tr><td>a &lt; b &amp; c</td><td>&lt;b&gt;x&lt;/b&gt;</td></tr></table>"
        );
    }

    #[test]
    fn not_a_table() {
        assert_eq!(otsl_to_html("just text"), None);
        assert!(!is_otsl("a | b\nc | d"));
        assert_eq!(otsl_to_html("<nl>").unwrap(), "<table></table>");
        // Multi-byte text next to tags.
        assert_eq!(
            otsl_to_html("<fcel>é<fcel>名<nl>").unwrap(),
            "<table><tr><td>é</td><td>名</td></tr></table>"
        );
    }
}
