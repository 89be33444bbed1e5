// tensor_list.h: running one element-wise kernel over many tensors in one parallel region.
//
// A training step touches tens to hundreds of parameter tensors of very different sizes
// (a 3x3x64x64 conv weight next to a 64-element bias). Launching a parallel loop per tensor
// pays the fork/join once per tensor and leaves threads idle on the small ones. Instead the
// tensors are treated as one long concatenation (element k of tensor t sits at offsets[t] + k)
// and that concatenation is split once:
//
//   for_each_part   element-wise work: the concatenation is cut into one contiguous part per
//                   thread (cuts at multiples of kPartAlign elements, so two threads never
//                   write the same cache line of a tensor that starts on one). Each thread
//                   then streams through its part, tensor piece by tensor piece. The split
//                   depends on the thread count, which is harmless because an element-wise
//                   kernel computes every element the same way wherever the cuts fall.
//
//   BlockList       reductions: a fixed list of blocks (at most kBlock elements, never
//                   crossing a tensor boundary) that depends on the sizes only. Each block
//                   yields one partial; folding the partials in block order makes the result
//                   bitwise identical for any thread count (the rule of parallel.h).
//
// GPU libraries (apex's multi_tensor_apply) build a chunk table because they launch
// thousands of small blocks; a CPU has a handful of threads, and each wants one long
// contiguous stream that the hardware prefetchers can follow.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

#include "common/parallel.h"

namespace dk {

constexpr int64_t kPartAlign = 64;          // elements; a multiple of every vector width
constexpr int64_t kMinPartElems = 1 << 15;  // below this per thread, fewer threads are faster

// The vectors below take an allocator tagged with a type of the including file's namespace
// (List<T, Tag>). Code compiled with -mavx2 / -mavx512f includes this header too, and every
// std::vector<int64_t> member it instantiated would be a weak symbol the linker may hand to
// baseline code; with the tag in the type, each ISA's instantiations have names of their own
// (.ci/check_isa_symbols.sh).
template <class T, class Tag>
struct TaggedAllocator {
  using value_type = T;
  TaggedAllocator() noexcept = default;
  template <class U>
  TaggedAllocator(const TaggedAllocator<U, Tag>&) noexcept {}
  template <class U>
  struct rebind {
    using other = TaggedAllocator<U, Tag>;
  };
  T* allocate(size_t n) {  // (not std::allocator<T>: its members would be shared symbols again)
    if (n > size_t(-1) / sizeof(T)) throw std::bad_array_new_length();
    return static_cast<T*>(::operator new(n * sizeof(T)));
  }
  void deallocate(T* p, size_t) noexcept { ::operator delete(p); }
  friend bool operator==(const TaggedAllocator&, const TaggedAllocator&) noexcept { return true; }
  friend bool operator!=(const TaggedAllocator&, const TaggedAllocator&) noexcept { return false; }
};
template <class T, class Tag>
using List = std::vector<T, TaggedAllocator<T, Tag>>;

// offsets[t] = sum of sizes[0..t), offsets[count] = total (int64 throughout).
template <class Tag>
List<int64_t, Tag> prefix_offsets(const int64_t* sizes, int64_t count) {
  List<int64_t, Tag> off(static_cast<size_t>(count) + 1, 0);
  for (int64_t t = 0; t < count; ++t) off[t + 1] = off[t] + sizes[t];
  return off;
}

// Call f(t, begin, end) for every non-empty piece [begin, end) of tensor t (local element
// indices), each piece exactly once, spread over the configured threads as described above.
template <class Offsets, class F>
void for_each_part(const Offsets& off, const F& f) {
  const int64_t count = static_cast<int64_t>(off.size()) - 1;
  const int64_t total = off.back();
  if (total <= 0) return;
  const int64_t want = std::max<int64_t>(1, total / kMinPartElems);
  const int64_t nparts = std::min<int64_t>(get_num_threads(), want);
  auto cut = [&](int64_t k) -> int64_t {  // start of part k in the concatenation
    if (k >= nparts) return total;
    const int64_t c = (total / nparts) * k + std::min(k, total % nparts);
    return c / kPartAlign * kPartAlign;
  };
  parallel_for(nparts, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t lo = cut(k), hi = cut(k + 1);
      if (lo >= hi) continue;
      // first tensor whose range ends after lo
      int64_t t = std::upper_bound(off.begin(), off.end(), lo) - off.begin() - 1;
      for (; t < count && off[t] < hi; ++t) {
        const int64_t b = std::max(lo, off[t]) - off[t];
        const int64_t e = std::min(hi, off[t + 1]) - off[t];
        if (e > b) f(t, b, e);
      }
    }
  });
}

// The fixed block list for reductions.
struct Block {
  int64_t tensor, begin, end;
};

constexpr int64_t kBlock = 1 << 16;

template <class Tag>
List<Block, Tag> make_blocks(const int64_t* sizes, int64_t count) {
  List<Block, Tag> blocks;
  for (int64_t t = 0; t < count; ++t)
    for (int64_t b = 0; b < sizes[t]; b += kBlock) blocks.push_back({t, b, std::min(sizes[t], b + kBlock)});
  return blocks;
}

// partial[i] = g(blocks[i]), the blocks spread over at most one thread per kMinPartElems
// elements (a small reduction runs inline: waking a sleeping thread costs more than it);
// the caller folds the partials in block order, so the grouping never changes the result.
template <class R, class Tag, class G>
List<R, Tag> map_blocks(const List<Block, Tag>& blocks, const G& g) {
  List<R, Tag> partial(blocks.size());
  const int64_t nb = static_cast<int64_t>(blocks.size());
  int64_t total = 0;
  for (const Block& b : blocks) total += b.end - b.begin;
  const int64_t nparts = std::min<int64_t>({get_num_threads(), std::max<int64_t>(1, total / kMinPartElems), nb});
  if (nparts <= 1) {
    for (int64_t i = 0; i < nb; ++i) partial[i] = g(blocks[i]);
    return partial;
  }
  parallel_for(nparts, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t i = k0 * nb / nparts; i < k1 * nb / nparts; ++i) partial[i] = g(blocks[i]);
  });
  return partial;
}

}  // namespace dk
