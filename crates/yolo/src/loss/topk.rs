//! Which indices PyTorch's CPU `torch.topk(x, k, largest=True)` returns when values tie.
//!
//! ultralytics' `TaskAlignedAssigner.select_topk_candidates` takes `topk` over *all* anchors of an
//! image, most of whose alignment metrics are exactly 0; when a ground truth has fewer than `k`
//! anchors with a positive metric, the zero-valued anchors it picks are decided by how PyTorch's
//! CPU kernel (`aten/src/ATen/native/TopKImpl.h`, `topk_impl_loop`) breaks ties, and the picked
//! anchors that lie inside the box become positives (they can change the assignment of anchors
//! shared with other boxes). That kernel fills (value, index) pairs and calls the C++ standard
//! library with the comparator `a.value > b.value` (NaN first):
//! `std::partial_sort(first, first + k, last)` when `k · 64 <= n`, else
//! `std::nth_element(first, first + k − 1, last)`; the first k pairs are the result.
//!
//! This module re-implements those two libstdc++ algorithms (GCC `bits/stl_algo.h`,
//! `bits/stl_heap.h`: introselect with median-of-three pivots and the heap select) step for step,
//! so the *set* of returned indices is PyTorch's. `tests/fixtures/yolo/loss_topk.json`
//! (`tools/make_loss_fixtures.py`) holds PyTorch's answers on heavily tied vectors.

type Elem = (f64, usize);

#[inline]
fn comp(a: &Elem, b: &Elem) -> bool {
    (a.0.is_nan() && !b.0.is_nan()) || a.0 > b.0
}

/// The indices (ascending) of the `k` largest values of `values` as PyTorch's CPU `topk` selects
/// them, ties included. `k` is capped at `values.len()`.
pub fn torch_topk_indices(values: &[f32], k: usize) -> Vec<usize> {
    let n = values.len();
    let k = k.min(n);
    if k == 0 {
        return Vec::new();
    }
    let mut q: Vec<Elem> = values.iter().enumerate().map(|(i, &v)| (v as f64, i)).collect();
    if k * 64 <= n {
        heap_select(&mut q, 0, k, n);
    } else {
        nth_element(&mut q, k - 1);
    }
    let mut idx: Vec<usize> = q[..k].iter().map(|e| e.1).collect();
    idx.sort_unstable();
    idx
}

/// `std::nth_element(first, first + nth, last, comp)`.
fn nth_element(q: &mut [Elem], nth: usize) {
    let n = q.len();
    if n == 0 || nth == n {
        return;
    }
    let depth = 2 * (usize::BITS - 1 - n.leading_zeros()) as usize; // std::__lg(n) * 2
    introselect(q, 0, nth, n, depth);
}

/// `std::__introselect`.
fn introselect(q: &mut [Elem], mut first: usize, nth: usize, mut last: usize, mut depth: usize) {
    while last - first > 3 {
        if depth == 0 {
            heap_select(q, first, nth + 1, last);
            q.swap(first, nth);
            return;
        }
        depth -= 1;
        let cut = unguarded_partition_pivot(q, first, last);
        if cut <= nth {
            first = cut;
        } else {
            last = cut;
        }
    }
    insertion_sort(q, first, last);
}

/// `std::__unguarded_partition_pivot`.
fn unguarded_partition_pivot(q: &mut [Elem], first: usize, last: usize) -> usize {
    let mid = first + (last - first) / 2;
    move_median_to_first(q, first, first + 1, mid, last - 1);
    unguarded_partition(q, first + 1, last, first)
}

/// `std::__move_median_to_first`.
fn move_median_to_first(q: &mut [Elem], result: usize, a: usize, b: usize, c: usize) {
    let pick = if comp(&q[a], &q[b]) {
        if comp(&q[b], &q[c]) {
            b
        } else if comp(&q[a], &q[c]) {
            c
        } else {
            a
        }
    } else if comp(&q[a], &q[c]) {
        a
    } else if comp(&q[b], &q[c]) {
        c
    } else {
        b
    };
    q.swap(result, pick);
}

/// `std::__unguarded_partition` around the pivot at `pivot`.
fn unguarded_partition(q: &mut [Elem], mut first: usize, mut last: usize, pivot: usize) -> usize {
    loop {
        while comp(&q[first], &q[pivot]) {
            first += 1;
        }
        last -= 1;
        while comp(&q[pivot], &q[last]) {
            last -= 1;
        }
        if first >= last {
            return first;
        }
        q.swap(first, last);
        first += 1;
    }
}

/// `std::__insertion_sort` of `q[first..last]`.
fn insertion_sort(q: &mut [Elem], first: usize, last: usize) {
    if first == last {
        return;
    }
    for i in first + 1..last {
        let val = q[i];
        if comp(&val, &q[first]) {
            q.copy_within(first..i, first + 1);
            q[first] = val;
        } else {
            // std::__unguarded_linear_insert
            let mut hole = i;
            while comp(&val, &q[hole - 1]) {
                q[hole] = q[hole - 1];
                hole -= 1;
            }
            q[hole] = val;
        }
    }
}

/// `std::__heap_select(first, middle, last)`: a heap of the first `middle − first` elements,
/// then every later element that compares before the heap's top replaces it.
fn heap_select(q: &mut [Elem], first: usize, middle: usize, last: usize) {
    make_heap(q, first, middle);
    let len = middle - first;
    for i in middle..last {
        if comp(&q[i], &q[first]) {
            // std::__pop_heap(first, middle, i)
            let value = q[i];
            q[i] = q[first];
            adjust_heap(q, first, 0, len, value);
        }
    }
}

/// `std::__make_heap` of `q[first..last]`.
fn make_heap(q: &mut [Elem], first: usize, last: usize) {
    let len = last - first;
    if len < 2 {
        return;
    }
    let mut parent = (len - 2) / 2;
    loop {
        let value = q[first + parent];
        adjust_heap(q, first, parent, len, value);
        if parent == 0 {
            return;
        }
        parent -= 1;
    }
}

/// `std::__adjust_heap` (hole sift-down, then `std::__push_heap`).
fn adjust_heap(q: &mut [Elem], first: usize, mut hole: usize, len: usize, value: Elem) {
    let top = hole;
    let mut second = hole;
    while second < (len.saturating_sub(1)) / 2 {
        second = 2 * (second + 1);
        if comp(&q[first + second], &q[first + second - 1]) {
            second -= 1;
        }
        q[first + hole] = q[first + second];
        hole = second;
    }
    if len & 1 == 0 && second == (len - 2) / 2 {
        second = 2 * (second + 1);
        q[first + hole] = q[first + second - 1];
        hole = second - 1;
    }
    // std::__push_heap
    let mut parent = hole.wrapping_sub(1) / 2;
    while hole > top && comp(&q[first + parent], &value) {
        q[first + hole] = q[first + parent];
        hole = parent;
        parent = hole.wrapping_sub(1) / 2;
    }
    q[first + hole] = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_values_give_the_largest() {
        let v: Vec<f32> = (0..200).map(|i| ((i * 37) % 200) as f32).collect();
        for k in [1, 3, 10] {
            let got = torch_topk_indices(&v, k);
            let mut want: Vec<usize> = (0..200).filter(|&i| v[i] >= (200 - k) as f32).collect();
            want.sort_unstable();
            assert_eq!(got, want);
        }
        let v: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32).collect();
        let got = torch_topk_indices(&v, 10);
        assert!(got.iter().all(|&i| v[i] >= 990.0) && got.len() == 10);
    }

    #[test]
    fn k_is_capped() {
        assert_eq!(torch_topk_indices(&[0.0, 1.0, 0.5], 10), vec![0, 1, 2]);
        assert!(torch_topk_indices(&[], 3).is_empty());
    }
}
