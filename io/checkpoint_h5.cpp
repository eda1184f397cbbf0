// HDF5 helpers of the checkpoint format (io/checkpoint_internal.h): the dtype <-> HDF5 type map with the
// custom bf16 and f16 float types (formats.md §4.3), string / integer attributes, error-stack text,
// the file access property list.
#include <bit>
#include <cstring>

#include "io/checkpoint_internal.h"

namespace dg::ckpt {

static_assert(std::endian::native == std::endian::little, "checkpoint types are little-endian");

H5Quiet::H5Quiet() {
  H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}
H5Quiet::~H5Quiet() { H5Eset_auto2(H5E_DEFAULT, func_, data_); }

std::string h5_error() {
  std::string inner;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_DOWNWARD,
      [](unsigned, const H5E_error2_t* e, void* out) -> herr_t {
        if (e->desc && *e->desc) *static_cast<std::string*>(out) = e->desc;  // the last one is the innermost
        return 0;
      },
      &inner);
  return inner;
}

namespace {

// A copy of F32LE with the given bit fields (formats.md §4.3).
hid_t make_float(std::size_t exp_pos, std::size_t exp_bits, std::size_t mant_bits, std::size_t bias) {
  const hid_t t = H5Tcopy(H5T_IEEE_F32LE);
  bool ok = t >= 0;
  ok = ok && H5Tset_fields(t, 15, exp_pos, exp_bits, 0, mant_bits) >= 0;
  ok = ok && H5Tset_offset(t, 0) >= 0;
  ok = ok && H5Tset_precision(t, 16) >= 0;
  ok = ok && H5Tset_size(t, 2) >= 0;
  ok = ok && H5Tset_ebias(t, bias) >= 0;
  if (!ok) fail("cannot build the HDF5 16-bit float type: {}", h5_error());
  return t;
}

}  // namespace

hid_t h5_type(DType t) {
  switch (t) {
    case DType::F32: return H5T_IEEE_F32LE;
    case DType::I32: return H5T_STD_I32LE;
    case DType::I64: return H5T_STD_I64LE;
    case DType::BF16: {
      static const hid_t bf16 = make_float(7, 8, 7, 127);
      return bf16;
    }
    case DType::F16: {
      static const hid_t f16 = make_float(10, 5, 10, 15);
      return f16;
    }
  }
  fail("no HDF5 type for dtype {}", static_cast<int>(t));
}

bool dtype_of_h5(hid_t type, DType& out) {
  for (DType t : {DType::F32, DType::BF16, DType::F16, DType::I32, DType::I64})
    if (H5Tequal(type, h5_type(t)) > 0) return out = t, true;
  return false;
}

std::string describe_h5_type(hid_t type) {
  if (DType t; dtype_of_h5(type, t)) return std::string(dtype_name(t));
  const std::size_t size = H5Tget_size(type);
  switch (H5Tget_class(type)) {
    case H5T_FLOAT: {
      std::size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
      H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize);
      return fmt::format("an HDF5 float of {} bytes (sign bit {}, exponent {}+{}, mantissa {}+{}, bias {})", size, spos,
                         epos, esize, mpos, msize, H5Tget_ebias(type));
    }
    case H5T_INTEGER:
      return fmt::format("an HDF5 {} integer of {} bytes", H5Tget_sign(type) == H5T_SGN_NONE ? "unsigned" : "signed",
                         size);
    case H5T_STRING: return "an HDF5 string";
    default: return fmt::format("an HDF5 type of class {} and {} bytes", static_cast<int>(H5Tget_class(type)), size);
  }
}

void write_attr_string(hid_t obj, const char* name, const std::string& value) {
  H5Id type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Id space(H5Screate(H5S_SCALAR), H5Sclose);
  bool ok = type.valid() && space.valid() && H5Tset_size(type.get(), value.size() + 1) >= 0 &&
            H5Tset_strpad(type.get(), H5T_STR_NULLTERM) >= 0;
  H5Id attr(ok ? H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT) : -1, H5Aclose);
  if (!attr.valid() || H5Awrite(attr.get(), type.get(), value.c_str()) < 0)
    fail("cannot write HDF5 attribute {}: {}", name, h5_error());
}

void write_attr_i64(hid_t obj, const char* name, const std::vector<std::int64_t>& values, bool scalar) {
  const hsize_t n = values.size();
  DG_CHECK(!scalar || n == 1, "scalar attribute {} with {} values", name, n);
  H5Id space(scalar ? H5Screate(H5S_SCALAR) : n == 0 ? H5Screate(H5S_NULL) : H5Screate_simple(1, &n, nullptr), H5Sclose);
  H5Id attr(space.valid() ? H5Acreate2(obj, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT) : -1, H5Aclose);
  if (!attr.valid() || (n > 0 && H5Awrite(attr.get(), H5T_NATIVE_INT64, values.data()) < 0))
    fail("cannot write HDF5 attribute {}: {}", name, h5_error());
}

bool read_attr_string(hid_t obj, const char* name, std::string& out) {
  if (H5Aexists(obj, name) <= 0) return false;
  H5Id attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  if (!attr.valid()) return false;
  H5Id type(H5Aget_type(attr.get()), H5Tclose);
  H5Id space(H5Aget_space(attr.get()), H5Sclose);
  if (!type.valid() || !space.valid() || H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) != 0 ||
      H5Sget_simple_extent_npoints(space.get()) != 1)
    return false;
  const std::size_t size = H5Tget_size(type.get());
  if (size == 0 || size > (1u << 20)) return false;
  std::string buf(size, '\0');
  if (H5Aread(attr.get(), type.get(), buf.data()) < 0) return false;
  out = buf.substr(0, std::strlen(buf.c_str()));
  return true;
}

bool read_attr_i64(hid_t obj, const char* name, std::vector<std::int64_t>& out) {
  if (H5Aexists(obj, name) <= 0) return false;
  H5Id attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  if (!attr.valid()) return false;
  H5Id type(H5Aget_type(attr.get()), H5Tclose);
  H5Id space(H5Aget_space(attr.get()), H5Sclose);
  if (!type.valid() || !space.valid() || H5Tget_class(type.get()) != H5T_INTEGER) return false;
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  if (n < 0 || n > 64) return false;
  out.assign(static_cast<std::size_t>(n), 0);
  return n == 0 || H5Aread(attr.get(), H5T_NATIVE_INT64, out.data()) >= 0;  // n == 0: a null dataspace
}

H5Id hyperslab_space(const Shape& dims, const Shape& start, const Shape& count) {
  std::vector<hsize_t> hd(dims.begin(), dims.end()), hs(start.begin(), start.end()), hc(count.begin(), count.end());
  H5Id space(H5Screate_simple(static_cast<int>(hd.size()), hd.data(), nullptr), H5Sclose);
  if (!space.valid() || H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, hs.data(), nullptr, hc.data(), nullptr) < 0)
    fail("cannot build an HDF5 selection: {}", h5_error());
  return space;
}

H5Id make_fapl() {
  H5Id fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  if (!fapl.valid() || H5Pset_alignment(fapl.get(), 1 << 20, 1 << 20) < 0 ||
      H5Pset_file_locking(fapl.get(), false, true) < 0)
    fail("cannot set up an HDF5 file access property list: {}", h5_error());
  return fapl;
}

}  // namespace dg::ckpt
