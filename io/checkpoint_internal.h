// Internals shared by the checkpoint writer and reader (io/checkpoint.h): slice geometry (boxes, flat ranges
// cut into row-major contiguous boxes, intersections) and thin HDF5 helpers (owning handles, the dtype <->
// HDF5 type map with the custom bf16/f16 floats, attributes, error text). Not a public interface.
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

#include "io/checkpoint.h"

namespace dg::ckpt {

// ---- geometry -------------------------------------------------------------------------------------------
struct Box {
  Shape offset, count;
  std::int64_t numel() const { return shape_numel(count); }
};

// Row-major linear index of `idx` in an array of `dims`.
std::int64_t linear_index(const Shape& idx, const Shape& dims);
// Elements [begin, end) of a row-major `dims` array as at most 2*ndim-1 boxes, each contiguous in memory
// (fixed leading indices, one partial dimension, whole trailing dimensions), in order.
std::vector<Box> flat_to_boxes(std::int64_t begin, std::int64_t end, const Shape& dims);
// The boxes a slice of a tensor of shape `dims` covers (one for a box slice).
std::vector<Box> slice_boxes(const Slice& s, const Shape& dims);
// Intersection of two boxes of the same rank; false when it is empty.
bool intersect(const Box& a, const Box& b, Box& out);
// True when `inner` (inside `outer`) occupies one contiguous run of outer's row-major layout.
bool contiguous_in(const Box& inner, const Box& outer);
std::string box_str(const Box& b);

// ---- HDF5 ---------------------------------------------------------------------------------------------
// An owned hid_t closed with its H5?close function.
class H5Id {
 public:
  using Closer = herr_t (*)(hid_t);
  H5Id() = default;
  H5Id(hid_t id, Closer c) : id_(id), close_(c) {}
  ~H5Id() { reset(); }
  H5Id(H5Id&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  H5Id& operator=(H5Id&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = o.id_, close_ = o.close_, o.id_ = -1;
    }
    return *this;
  }
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset() {
    if (id_ >= 0 && close_) close_(id_);
    id_ = -1;
  }
  hid_t release() {
    const hid_t id = id_;
    id_ = -1;
    return id;
  }

 private:
  hid_t id_ = -1;
  Closer close_ = nullptr;
};

// Turns HDF5's automatic error printing off while it lives (errors become exception messages instead).
class H5Quiet {
 public:
  H5Quiet();
  ~H5Quiet();
  H5Quiet(const H5Quiet&) = delete;
  H5Quiet& operator=(const H5Quiet&) = delete;

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

// The innermost message of HDF5's current error stack ("" when empty); call right after a failed call.
std::string h5_error();

// The canonical HDF5 type of a dtype (library-owned or created once; never close it).
hid_t h5_type(DType t);
// The dtype whose canonical type equals `type` (false when none does), and a description for messages.
bool dtype_of_h5(hid_t type, DType& out);
std::string describe_h5_type(hid_t type);

// Attributes of a file or dataset.
void write_attr_string(hid_t obj, const char* name, const std::string& value);
void write_attr_i64(hid_t obj, const char* name, const std::vector<std::int64_t>& values, bool scalar);
// False when the attribute is missing or has the wrong type.
bool read_attr_string(hid_t obj, const char* name, std::string& out);
bool read_attr_i64(hid_t obj, const char* name, std::vector<std::int64_t>& out);

// A file access property list: 1 MiB alignment of objects >= 1 MiB, file locking off.
H5Id make_fapl();

// A dataspace of `dims` with the box [start, start + count) selected.
H5Id hyperslab_space(const Shape& dims, const Shape& start, const Shape& count);

// A key's validity (see checkpoint.h); `why` explains a refusal.
bool valid_key(const std::string& key, std::string& why);
// "rank_00003.h5"
std::string rank_file_name(int rank);
// "bf16" -> DType::BF16 (false for an unknown name).
bool parse_dtype(const std::string& s, DType& out);

}  // namespace dg::ckpt
