//! Pages of a listing: a page holds at most `size` objects in id order,
//! and its token names the last id returned, so the next page starts after
//! it however the listing changed in between.

use crate::cloud::model::Page;

/// Largest page a list call may ask for.
pub const MAX_PAGE_SIZE: usize = 100;
/// The page size of a list call that names none.
pub const DEFAULT_PAGE_SIZE: usize = 50;

/// A validated page request.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub size: usize,
    pub token: Option<String>,
}

/// The page `page` asks for of `items`, which come in id order.
pub(super) fn paginate<'a, T: Clone + 'a>(
    items: impl Iterator<Item = (&'a String, &'a T)>,
    page: &PageRequest,
) -> Page<T> {
    let mut out = Vec::new();
    let mut next = None;
    for (id, item) in items {
        if let Some(after) = &page.token
            && id.as_str() <= after.as_str()
        {
            continue;
        }
        if out.len() == page.size {
            next = out.last().map(|_| id.clone());
            break;
        }
        out.push((id.clone(), item.clone()));
    }
    // The token names the last id returned; the next page starts after it.
    let next_page_token = next.and(out.last().map(|(id, _)| id.clone()));
    Page {
        items: out.into_iter().map(|(_, item)| item).collect(),
        next_page_token,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn items(n: usize) -> BTreeMap<String, usize> {
        (0..n).map(|i| (format!("id-{i:03}"), i)).collect()
    }

    #[test]
    fn pagination_walks_every_item_once() {
        let cases = [(0, 5), (5, 5), (6, 5), (11, 1), (3, 100)];
        for (n, size) in cases {
            let all = items(n);
            let mut seen = Vec::new();
            let mut page = PageRequest { size, token: None };
            for _ in 0..=n {
                let p = paginate(all.iter(), &page);
                assert!(p.items.len() <= size, "n={n} size={size}");
                seen.extend(p.items);
                match p.next_page_token {
                    Some(t) => page.token = Some(t),
                    None => break,
                }
            }
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n={n} size={size}");
        }
    }
}
