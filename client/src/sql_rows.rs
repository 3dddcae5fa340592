//! Statements that write many keystore rows at once. One statement per
//! row paid SQLite's work per statement (cursors opened and closed on the
//! table and each index, the statement halted and reset) once per text: a
//! fifth of storing it. A batch goes in statements of [`MAX_ROWS`] rows,
//! the rest in powers of two, so a handful of statement shapes, each
//! prepared once and cached, carry a batch of any size.

use std::fmt::Write;

/// Rows in the largest statement.
pub(crate) const MAX_ROWS: usize = 32;

/// How many statement shapes there are: 1, 2, 4, ... [`MAX_ROWS`] rows.
pub(crate) const SHAPES: usize = MAX_ROWS.trailing_zeros() as usize + 1;

/// `rows` cut into the pieces one statement each carries: [`MAX_ROWS`] at
/// a time, then the largest power of two that fits, until none is left.
pub(crate) fn statement_chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if rows.is_empty() {
            return None;
        }
        let n = rows.len().min(MAX_ROWS);
        let n = 1 << (usize::BITS - 1 - n.leading_zeros());
        let (now, rest) = rows.split_at(n);
        rows = rest;
        Some(now)
    })
}

/// The statement for `n` rows (a power of two up to [`MAX_ROWS`]) among
/// those [`statements`] made.
pub(crate) fn shape(statements: &[String; SHAPES], n: usize) -> &str {
    &statements[n.trailing_zeros() as usize]
}

/// The statement of each shape: `head`, then `row` once per row with its
/// `?k` parameters numbered on (row `i` takes `?(i * per_row + k)`), the
/// copies separated by commas, then `tail`.
pub(crate) fn statements(head: &str, row: &str, per_row: usize, tail: &str) -> [String; SHAPES] {
    std::array::from_fn(|shape| {
        let n = 1usize << shape;
        let mut sql = String::with_capacity(head.len() + n * (row.len() + 8) + tail.len());
        sql.push_str(head);
        for i in 0..n {
            if i > 0 {
                sql.push(',');
            }
            let mut rest = row;
            while let Some(at) = rest.find('?') {
                sql.push_str(&rest[..=at]);
                rest = &rest[at + 1..];
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                let k: usize = rest[..digits].parse().expect("parameters are numbered");
                let _ = write!(sql, "{}", i * per_row + k);
                rest = &rest[digits..];
            }
            sql.push_str(rest);
        }
        sql.push_str(tail);
        sql
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_goes_in_full_statements_then_powers_of_two() {
        let sizes = |len: usize| {
            let rows = vec![0u8; len];
            statement_chunks(&rows).map(<[u8]>::len).collect::<Vec<_>>()
        };
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(7), [4, 2, 1]);
        assert_eq!(sizes(32), [32]);
        assert_eq!(sizes(100), [32, 32, 32, 4]);
        for len in 0..200 {
            assert_eq!(sizes(len).iter().sum::<usize>(), len);
        }
    }

    #[test]
    fn each_row_gets_its_own_parameters() {
        let all = statements(
            "INSERT INTO t VALUES ",
            "(?1, ?2, 'x', ?2, ?10)",
            10,
            " RETURNING a",
        );
        assert_eq!(
            all[0],
            "INSERT INTO t VALUES (?1, ?2, 'x', ?2, ?10) RETURNING a"
        );
        assert_eq!(
            shape(&all, 2),
            "INSERT INTO t VALUES (?1, ?2, 'x', ?2, ?10),(?11, ?12, 'x', ?12, ?20) RETURNING a"
        );
        assert!(shape(&all, MAX_ROWS).contains("?320)"));
    }
}
