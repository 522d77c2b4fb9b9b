//! Response header maps kept for the next response, per thread. A response's map is made
//! for every response read from a peer or the application, and one of eight headers or more
//! (an nginx answer has eight) is beyond glibc's per-thread cache (1,032 bytes), so each cost a
//! trip through the heap's bins to make and another to free. Once its head is written, a
//! response's map is cleared and kept instead. Requests' maps are not: a request arrives
//! with few headers, and its small map stays within that cache.
//!
//! In: the maps of responses whose head was written ([`give_back`]). Out: maps for response
//! heads being parsed ([`take`]).

use std::cell::RefCell;

use http::HeaderMap;

/// Maps kept per thread: a response needs one while its head is parsed and written, and a
/// burst of many responses at once allocates what it needs beyond these.
const KEPT: usize = 16;

/// A kept map larger than this (a message with many headers) is freed, not kept.
const MAX_CAPACITY: usize = 48;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for `headers`: a kept one if this thread has one.
pub fn take(headers: usize) -> HeaderMap {
    match SPARE.with_borrow_mut(Vec::pop) {
        Some(mut map) => {
            map.reserve(headers);
            map
        }
        None => HeaderMap::with_capacity(headers),
    }
}

/// Keeps `map` (cleared) for a later message, unless enough are kept or it is large.
pub fn give_back(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > MAX_CAPACITY {
        return;
    }
    map.clear();
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < KEPT {
            spare.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use http::header::{HeaderValue, HOST};

    use super::*;

    #[test]
    fn a_map_given_back_is_taken_again_empty_with_its_room() {
        let mut map = HeaderMap::with_capacity(8);
        map.insert(HOST, HeaderValue::from_static("backend"));
        let room = map.capacity();
        give_back(map);
        let again = take(3);
        assert!(again.is_empty(), "a kept map is cleared");
        assert_eq!(again.capacity(), room, "and keeps its allocation");
        // The thread has none left: the next is new.
        assert_eq!(take(1).capacity(), HeaderMap::<HeaderValue>::with_capacity(1).capacity());
    }

    #[test]
    fn large_maps_and_more_than_the_limit_are_not_kept() {
        give_back(HeaderMap::with_capacity(MAX_CAPACITY * 2));
        assert_eq!(take(0).capacity(), 0, "a large map is freed");
        for _ in 0..KEPT + 4 {
            give_back(HeaderMap::with_capacity(4));
        }
        let kept = std::iter::from_fn(|| Some(take(0))).take_while(|m| m.capacity() > 0).count();
        assert_eq!(kept, KEPT);
    }
}
