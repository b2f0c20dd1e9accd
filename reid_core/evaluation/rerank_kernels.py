"""Compiled parts of k-reciprocal re-ranking: neighbourhood expansion and the Jaccard term."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(inline="always")
def _reciprocal(knn: np.ndarray, i: int, k: int, out: np.ndarray) -> int:
    """Write R(i, k) — the j among i's k+1 nearest having i among their k+1 nearest — to out."""
    n = 0
    for a in range(k + 1):
        j = knn[i, a]
        for b in range(k + 1):
            if knn[j, b] == i:
                out[n] = j
                n += 1
                break
    return n


@numba.njit(inline="always")
def _scaled_sq_dist(feats, sq_norms, i: int, j: int, cosine: bool, row_max: float) -> float:
    """Squared distance of items i and j divided by i's row maximum (the published scaling)."""
    dot = 0.0
    for c in range(feats.shape[1]):
        dot += feats[i, c] * feats[j, c]
    sq = (1.0 - dot) ** 2 if cosine else max(sq_norms[i] + sq_norms[j] - 2.0 * dot, 0.0)
    return sq / row_max


@numba.njit(parallel=True, cache=True)
def expansion_weights(
    knn: np.ndarray,
    k1: int,
    feats: np.ndarray,
    sq_norms: np.ndarray,
    row_max: np.ndarray,
    cosine: bool,
    width: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each item's expanded k-reciprocal set and its weights exp(−d)/Σ, padded to `width`.

    A candidate c of R(i, k1) adds R(c, round(k1/2)) when more than 2/3 of that set already
    lies in R(i, k1). Returns (columns, weights, count per row).
    """
    n = knn.shape[0]
    half = int(np.round(k1 / 2.0))
    cols = np.full((n, width), -1, np.int64)
    weights = np.zeros((n, width), np.float32)
    counts = np.zeros(n, np.int64)
    for i in numba.prange(n):
        recip = np.empty(k1 + 1, np.int64)
        cand = np.empty(half + 1, np.int64)
        nr = _reciprocal(knn, i, k1, recip)
        members = np.empty(width, np.int64)
        m = 0
        for a in range(nr):
            members[m] = recip[a]
            m += 1
        for a in range(nr):
            nc = _reciprocal(knn, recip[a], half, cand)
            shared = 0
            for b in range(nc):
                for c in range(nr):
                    if cand[b] == recip[c]:
                        shared += 1
                        break
            if shared > 2.0 / 3.0 * nc:
                for b in range(nc):
                    members[m] = cand[b]
                    m += 1
        uniq = np.unique(members[:m])
        total = 0.0
        for a in range(len(uniq)):
            w = np.exp(-_scaled_sq_dist(feats, sq_norms, i, uniq[a], cosine, row_max[i]))
            weights[i, a] = w
            total += w
        for a in range(len(uniq)):
            cols[i, a] = uniq[a]
            weights[i, a] = weights[i, a] / total
        counts[i] = len(uniq)
    return cols, weights, counts


@numba.njit(inline="always")
def _jaccard(shared: float) -> float:
    """Jaccard distance of two neighbourhoods (rows of V) from their shared weight
    S = Σ_k min(V[i,k], V[j,k]): 1 − Σ_k min / Σ_k max, which is 1 − S/(2 − S) as rows sum to 1."""
    return 1.0 - shared / (2.0 - shared)


@numba.njit(inline="always")
def _gather_shared(
    i: int,
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    col_ptr: np.ndarray,
    col_rows: np.ndarray,
    col_data: np.ndarray,
    first_col: int,
    shared: np.ndarray,
    touched: np.ndarray,
) -> int:
    """shared[j] ← Σ_k min(V[i,k], V[first_col+j,k]) for each j ≥ 0 whose V row shares a k with
    item i's, listed once in touched (by first touch); returns how many. Each shared k costs
    one visit per pair.

    shared must be all zero on entry, and the caller zeroes the touched entries when done with
    them. V has no negative entries, so shared[j] stays zero until j gets a positive share and
    is listed then (a j that never gets one is at distance 1, as if untouched).
    """
    m = 0
    for p in range(indptr[i], indptr[i + 1]):
        v = data[p]
        k = indices[p]
        for q in range(col_ptr[k], col_ptr[k + 1]):
            j = col_rows[q] - first_col
            if j >= 0:
                if shared[j] == 0.0:
                    touched[m] = j
                    m += 1
                shared[j] += min(v, col_data[q])
    return m


@numba.njit(parallel=True, cache=True)
def blend_jaccard(
    out: np.ndarray,
    lambda_value: float,
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    col_ptr: np.ndarray,
    col_rows: np.ndarray,
    col_data: np.ndarray,
    first_col: int,
) -> None:
    """out[i, j] ← λ·out[i, j] + (1 − λ)·(1 − S/(2 − S)), S = Σ_k min(V[i,k], V[first_col+j,k]).

    `out` holds the scaled distances of rows 0..len(out)-1 to items first_col.. on entry.
    V is given by rows (CSR: indptr, indices, data) and by columns (CSC: col_ptr, col_rows,
    col_data), so each shared k is visited once per pair that has it.
    """
    num_rows, num_cols = out.shape
    for i in numba.prange(num_rows):
        shared = np.zeros(num_cols, np.float32)
        for p in range(indptr[i], indptr[i + 1]):
            k = indices[p]
            v = data[p]
            for q in range(col_ptr[k], col_ptr[k + 1]):
                j = col_rows[q] - first_col
                if j >= 0:
                    shared[j] += min(v, col_data[q])
        row = out[i]
        for j in range(num_cols):
            row[j] = lambda_value * row[j] + (1.0 - lambda_value) * _jaccard(shared[j])


@numba.njit(inline="always")
def _row_above(
    i: int,
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    col_ptr: np.ndarray,
    col_rows: np.ndarray,
    col_data: np.ndarray,
    max_distance: float,
    shared: np.ndarray,
    touched: np.ndarray,
) -> int:
    """The items j > i whose Jaccard distance to item i (float32, clipped to [0, 1]) is below
    max_distance, as j − i − 1 in touched[:count] (unordered), their distances at the same
    place in shared (which is zero elsewhere, and the caller zeroes there); returns count. Only
    items sharing a neighbourhood entry with i are looked at: the others are at distance 1."""
    m = _gather_shared(
        i, indptr, indices, data, col_ptr, col_rows, col_data, i + 1, shared, touched
    )
    count = 0
    for a in range(m):
        j = touched[a]
        # rounding can leave −1e-7 (clustering needs d ≥ 0) or 1 + 1e-7
        d = np.float32(min(max(_jaccard(shared[j]), 0.0), 1.0))
        shared[j] = 0.0
        if d < max_distance:
            touched[count] = j
            count += 1
            shared[j] = d
    return count


@numba.njit(parallel=True, cache=True)
def jaccard_above(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    col_ptr: np.ndarray,
    col_rows: np.ndarray,
    col_data: np.ndarray,
    max_distance: float,
    chunks: int,
    fill: bool,
    out_ptr: np.ndarray,
    out_cols: np.ndarray,
    out_vals: np.ndarray,
) -> None:
    """The upper triangle of the Jaccard distances among the items of V (by rows and by
    columns, as for `blend_jaccard`) as CSR rows: for each item i, the items j > i within
    max_distance of it, by ascending index. Each pair is computed once.

    Two passes with the same arithmetic: without `fill`, out_ptr[i + 1] ← item i's count;
    with it, out_ptr holding the row offsets, the rows are written. Rows go in `chunks`
    parallel runs, each with its own item-sized scratch arrays.
    """
    n = len(indptr) - 1
    chunks = min(n, chunks)
    per = (n + chunks - 1) // chunks
    for c in numba.prange(chunks):
        shared = np.zeros(n, np.float32)
        touched = np.empty(n, np.int64)
        for i in range(c * per, min(n, (c + 1) * per)):
            count = _row_above(
                i, indptr, indices, data, col_ptr, col_rows, col_data, max_distance, shared, touched
            )
            above = np.sort(touched[:count]) if fill else touched[:count]
            for a in range(count):
                if fill:
                    out_cols[out_ptr[i] + a] = i + 1 + above[a]
                    out_vals[out_ptr[i] + a] = shared[above[a]]
                shared[above[a]] = 0.0
            if not fill:
                out_ptr[i + 1] = count


@numba.njit(parallel=True, cache=True)
def mirror_upper(
    upper_ptr: np.ndarray,
    upper_cols: np.ndarray,
    upper_vals: np.ndarray,
    out_ptr: np.ndarray,
    out_cols: np.ndarray,
    out_vals: np.ndarray,
) -> None:
    """The symmetric CSR matrix whose strict upper triangle is `upper`, with an explicit 0 on
    the diagonal: row i is column i of upper (ascending), then i, then row i of upper. out_ptr
    holds the row offsets already."""
    n = len(upper_ptr) - 1
    for i in numba.prange(n):
        above = upper_ptr[i + 1] - upper_ptr[i]
        start = out_ptr[i + 1] - above - 1
        out_cols[start] = i
        out_vals[start] = 0.0
        for a in range(above):
            out_cols[start + 1 + a] = upper_cols[upper_ptr[i] + a]
            out_vals[start + 1 + a] = upper_vals[upper_ptr[i] + a]
    free = out_ptr[:-1].copy()
    for r in range(n):  # in order of rows: each row's part below the diagonal comes ascending
        for p in range(upper_ptr[r], upper_ptr[r + 1]):
            j = upper_cols[p]
            out_cols[free[j]] = r
            out_vals[free[j]] = upper_vals[p]
            free[j] += 1


@numba.njit(inline="always")
def _offer(best_d: np.ndarray, best_i: np.ndarray, value: float, index: int) -> None:
    """Insert (value, index), which beats the k-th entry, into an ascending running top-k.

    Strict comparison keeps the earlier-offered item first among ties, as a stable sort would.
    """
    p = best_d.shape[0] - 1
    while p > 0 and value < best_d[p - 1]:
        best_d[p] = best_d[p - 1]
        best_i[p] = best_i[p - 1]
        p -= 1
    best_d[p] = value
    best_i[p] = index


LANES = 32  # values scanned together: a fixed-length branch-free loop is what LLVM vectorises


@numba.njit(inline="always")
def _scan_lanes(row: np.ndarray, start: int, width: int, tops: np.ndarray, kths: np.ndarray):
    """tops[l] ← max(tops[l], row[start+l]) for l < width; returns how many row[start+l] are
    below kths[l] (mostly none, which is why the exact insertions can wait for a second look)."""
    below = 0
    if width == LANES:
        for lane in range(LANES):
            value = row[start + lane]
            tops[lane] = value if value > tops[lane] else tops[lane]
            below += value < kths[lane]
    else:
        for lane in range(width):
            value = row[start + lane]
            tops[lane] = value if value > tops[lane] else tops[lane]
            below += value < kths[lane]
    return below


@numba.njit(parallel=True, cache=True)
def fold_block(
    d: np.ndarray,
    first_row: int,
    first_col: int,
    best_d: np.ndarray,
    best_i: np.ndarray,
    row_max: np.ndarray,
    columns_too: bool,
    num_q: int,
    query_out: np.ndarray,
    query_best_d: np.ndarray,
    query_best_i: np.ndarray,
) -> None:
    """Fold a block of squared distances (rows first_row.., items first_col..) into the
    running k nearest and row maxima of its rows and, when columns_too, of its columns
    (the block read transposed, which symmetric distances make the other rows' block).

    The first num_q items are queries, the rest the gallery. On the way, query-to-gallery
    entries are copied to query_out (num_q × num_g, or no rows) and folded into the queries'
    nearest gallery items query_best_* (num_q × K, or no rows); blocks come with
    first_row ≤ first_col, so the rows pass sees all query-to-gallery entries.
    """
    last = best_d.shape[1] - 1
    num_rows, num_cols = d.shape
    for r in numba.prange(num_rows):
        i = first_row + r
        row = d[r]
        tops = np.full(LANES, row_max[i], d.dtype)
        kths = np.full(LANES, best_d[i, last], d.dtype)
        for j0 in range(0, num_cols, LANES):
            width = min(LANES, num_cols - j0)
            if _scan_lanes(row, j0, width, tops, kths):
                for j in range(j0, j0 + width):
                    if row[j] < kths[0]:
                        _offer(best_d[i], best_i[i], row[j], first_col + j)
                        kths[:] = best_d[i, last]
        row_max[i] = tops.max()
        if i < num_q:
            first_gallery = max(num_q - first_col, 0)
            if query_out.shape[0]:
                for j in range(first_gallery, num_cols):
                    query_out[i, first_col + j - num_q] = row[j]
            if query_best_d.shape[0]:
                kth = query_best_d[i, -1]
                for j in range(first_gallery, num_cols):
                    if row[j] < kth:
                        _offer(query_best_d[i], query_best_i[i], row[j], first_col + j - num_q)
                        kth = query_best_d[i, -1]
    if not columns_too:
        return
    for chunk in numba.prange((num_cols + LANES - 1) // LANES):
        c0 = chunk * LANES
        width = min(LANES, num_cols - c0)
        items = first_col + c0 + np.arange(width)
        tops = row_max[items]
        kths = best_d[items, last]
        for r in range(num_rows):
            if _scan_lanes(d[r], c0, width, tops, kths):
                for lane in range(width):
                    if d[r, c0 + lane] < kths[lane]:
                        item = items[lane]
                        _offer(best_d[item], best_i[item], d[r, c0 + lane], first_row + r)
                        kths[lane] = best_d[item, last]
        row_max[items] = tops


@numba.njit(parallel=True, cache=True)
def topk_jaccard(
    nearest: np.ndarray,
    nearest_sq: np.ndarray,
    lambda_value: float,
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    col_ptr: np.ndarray,
    col_rows: np.ndarray,
    col_data: np.ndarray,
    feats: np.ndarray,
    sq_norms: np.ndarray,
    row_max: np.ndarray,
    cosine: bool,
    num_q: int,
    chunks: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's top-K gallery items by λ·scaled distance + (1 − λ)·Jaccard, where K and
    the candidates beyond the items sharing a neighbourhood entry with the query come from
    `nearest` (its K nearest gallery items by plain distance, squared in `nearest_sq`).
    Returns (indices, distances), nearest first, ties by gallery index.

    An item outside `nearest` is at least as far as the K-th of them, so its score has a lower
    bound from its Jaccard distance alone; items are scored exactly in order of that bound
    until it exceeds the K-th best score so far. Queries go in `chunks` parallel runs, each with its
    own gallery-sized scratch arrays.
    """
    num_g = feats.shape[0] - num_q
    top_k = nearest.shape[1]
    out_i = np.empty((num_q, top_k), np.int64)
    out_d = np.empty((num_q, top_k), np.float32)
    chunks = min(num_q, chunks)
    per = (num_q + chunks - 1) // chunks
    for c in numba.prange(chunks):
        shared = np.zeros(num_g, np.float32)
        listed_by = np.full(num_g, -1, np.int64)  # the query whose nearest list holds j
        touched = np.empty(num_g, np.int64)
        for i in range(c * per, min(num_q, (c + 1) * per)):
            m = _gather_shared(
                i,
                indptr,
                indices,
                data,
                col_ptr,
                col_rows,
                col_data,
                num_q,
                shared,
                touched,
            )
            members = np.empty(top_k + m, np.int64)
            score = np.empty(top_k + m, np.float32)
            for a in range(top_k):
                j = nearest[i, a]
                listed_by[j] = i
                s = shared[j]  # 0 where untouched
                members[a] = j
                score[a] = lambda_value * nearest_sq[i, a] / row_max[i] + (
                    1.0 - lambda_value
                ) * _jaccard(s)
            kth = np.sort(score[:top_k])  # the running top-K scores, ascending
            floor = lambda_value * nearest_sq[i, top_k - 1] / row_max[i]
            jaccard = np.empty(m, np.float32)
            for a in range(m):
                j = touched[a]
                listed = listed_by[j] == i  # sorts last, as 2
                jaccard[a] = 2.0 if listed else _jaccard(shared[j])
            count = top_k
            for a in np.argsort(jaccard):  # most shared first: the bound only grows
                if jaccard[a] > 1.0:
                    break  # the rest are in the nearest list, scored already
                if floor + (1.0 - lambda_value) * jaccard[a] > kth[top_k - 1]:
                    break  # neither this item nor any later one can enter the top-K
                j = touched[a]
                dist = _scaled_sq_dist(feats, sq_norms, i, num_q + j, cosine, row_max[i])
                members[count] = j
                score[count] = lambda_value * dist + (1.0 - lambda_value) * jaccard[a]
                if score[count] <= kth[top_k - 1]:
                    b = top_k - 1
                    while b > 0 and score[count] < kth[b - 1]:
                        kth[b] = kth[b - 1]
                        b -= 1
                    kth[b] = score[count]
                count += 1
            for a in range(m):
                shared[touched[a]] = 0.0
            by_index = np.argsort(members[:count])  # gallery order first: ties keep it
            order = by_index[np.argsort(score[:count][by_index], kind="mergesort")]
            for a in range(top_k):
                out_i[i, a] = members[order[a]]
                out_d[i, a] = score[order[a]]
    return out_i, out_d
