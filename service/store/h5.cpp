#include "store/h5.hpp"

#include <algorithm>
#include <numeric>

namespace xanesd::h5 {

Handle::Handle(hid_t id, Closer close, const std::string& what) : id_(id), close_(close) {
  if (id_ < 0) throw Error("HDF5: cannot " + what);
}
Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    if (id_ >= 0 && close_) close_(id_);
    id_ = o.id_;
    close_ = o.close_;
    o.id_ = H5I_INVALID_HID;
  }
  return *this;
}
Handle::~Handle() {
  if (id_ >= 0 && close_) close_(id_);
}

namespace {
struct Silence {  // HDF5 prints error stacks to stderr by default; we report via exceptions
  Silence() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }
};
const Silence silence;
}  // namespace

Handle create_file(const std::filesystem::path& path) {
  return Handle(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose,
                "create file '" + path.string() + "'");
}
Handle open_file(const std::filesystem::path& path, hid_t access) {
  return Handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, access), H5Fclose, "open file '" + path.string() + "'");
}
Handle open_file_for_writing(const std::filesystem::path& path, hid_t access) {
  return Handle(H5Fopen(path.c_str(), H5F_ACC_RDWR, access), H5Fclose, "open file '" + path.string() + "' for writing");
}
Handle create_group(hid_t loc, const std::string& name, const std::string& nx_class) {
  Handle g(H5Gcreate2(loc, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose, "create group '" + name + "'");
  if (!nx_class.empty()) attr_string(g, "NX_class", nx_class);
  return g;
}
Handle open_group(hid_t loc, const std::string& name) {
  return Handle(H5Gopen2(loc, name.c_str(), H5P_DEFAULT), H5Gclose, "open group '" + name + "'");
}
Handle require_group(hid_t loc, const std::string& name, const std::string& nx_class) {
  if (!exists(loc, name)) return create_group(loc, name, nx_class);
  auto g = open_group(loc, name);
  if (!nx_class.empty() && !has_attr(g, "NX_class")) attr_string(g, "NX_class", nx_class);
  return g;
}
bool exists(hid_t loc, const std::string& path) {
  // Check each component: H5Lexists fails on a missing intermediate group.
  std::string partial;
  std::size_t pos = 0;
  while (pos != std::string::npos) {
    const auto next = path.find('/', pos);
    partial = path.substr(0, next);
    if (!partial.empty() && H5Lexists(loc, partial.c_str(), H5P_DEFAULT) <= 0) return false;
    pos = next == std::string::npos ? next : next + 1;
  }
  return true;
}

template <> hid_t native_type<float>() { return H5T_NATIVE_FLOAT; }
template <> hid_t native_type<double>() { return H5T_NATIVE_DOUBLE; }
template <> hid_t native_type<std::int32_t>() { return H5T_NATIVE_INT32; }
template <> hid_t native_type<std::int64_t>() { return H5T_NATIVE_INT64; }
template <> hid_t native_type<std::uint8_t>() { return H5T_NATIVE_UINT8; }
template <> hid_t native_type<std::uint16_t>() { return H5T_NATIVE_UINT16; }
template <> hid_t native_type<std::uint32_t>() { return H5T_NATIVE_UINT32; }

template <class T>
void write(hid_t loc, const std::string& name, const T* data, const std::vector<hsize_t>& dims) {
  Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose, "create dataspace");
  Handle ds(H5Dcreate2(loc, name.c_str(), native_type<T>(), space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose,
            "create dataset '" + name + "'");
  if (H5Dwrite(ds, native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
    throw Error("HDF5: cannot write dataset '" + name + "'");
}

void write_plane_view(hid_t loc, const std::string& name, const std::string& source_path,
                      const std::vector<hsize_t>& source_dims, hsize_t plane, hid_t type) {
  const std::vector<hsize_t> dims(source_dims.begin() + 1, source_dims.end());
  Handle view(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose, "create dataspace");
  Handle source(H5Screate_simple(static_cast<int>(source_dims.size()), source_dims.data(), nullptr), H5Sclose,
                "create dataspace");
  std::vector<hsize_t> start(source_dims.size(), 0), count(source_dims);
  start[0] = plane, count[0] = 1;
  if (H5Sselect_hyperslab(source, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr) < 0)
    throw Error("HDF5: cannot select plane " + std::to_string(plane) + " of '" + source_path + "'");
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, "create dataset properties");
  if (H5Pset_virtual(dcpl, view, ".", source_path.c_str(), source) < 0)  // ".": this file
    throw Error("HDF5: cannot map '" + name + "' to '" + source_path + "'");
  Handle ds(H5Dcreate2(loc, name.c_str(), type, view, H5P_DEFAULT, dcpl, H5P_DEFAULT), H5Dclose,
            "create virtual dataset '" + name + "'");
}

namespace {
Handle string_type() {
  Handle t(H5Tcopy(H5T_C_S1), H5Tclose, "copy string type");
  H5Tset_size(t, H5T_VARIABLE);
  H5Tset_cset(t, H5T_CSET_UTF8);
  return t;
}
}  // namespace

void write_string(hid_t loc, const std::string& name, const std::string& value) {
  auto t = string_type();
  Handle space(H5Screate(H5S_SCALAR), H5Sclose, "create scalar space");
  Handle ds(H5Dcreate2(loc, name.c_str(), t, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose,
            "create dataset '" + name + "'");
  const char* p = value.c_str();
  if (H5Dwrite(ds, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, &p) < 0) throw Error("HDF5: cannot write '" + name + "'");
}

void write_strings(hid_t loc, const std::string& name, const std::vector<std::string>& values) {
  auto t = string_type();
  const hsize_t n = values.size();
  Handle space(H5Screate_simple(1, &n, nullptr), H5Sclose, "create dataspace");
  Handle ds(H5Dcreate2(loc, name.c_str(), t, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose,
            "create dataset '" + name + "'");
  std::vector<const char*> ptrs;
  for (const auto& v : values) ptrs.push_back(v.c_str());
  if (n && H5Dwrite(ds, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()) < 0)
    throw Error("HDF5: cannot write '" + name + "'");
}

void attr_string(hid_t obj, const std::string& name, const std::string& value) {
  auto t = string_type();
  Handle space(H5Screate(H5S_SCALAR), H5Sclose, "create scalar space");
  Handle a(H5Acreate2(obj, name.c_str(), t, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose, "create attribute '" + name + "'");
  const char* p = value.c_str();
  H5Awrite(a, t, &p);
}

void attr_strings(hid_t obj, const std::string& name, const std::vector<std::string>& values) {
  auto t = string_type();
  const hsize_t n = values.size();
  Handle space(H5Screate_simple(1, &n, nullptr), H5Sclose, "create dataspace");
  Handle a(H5Acreate2(obj, name.c_str(), t, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose, "create attribute '" + name + "'");
  std::vector<const char*> ptrs;
  for (const auto& v : values) ptrs.push_back(v.c_str());
  H5Awrite(a, t, ptrs.data());
}

bool has_attr(hid_t obj, const std::string& name) { return H5Aexists(obj, name.c_str()) > 0; }

namespace {
// Reads variable- or fixed-length strings from a dataset or attribute.
std::vector<std::string> read_string_values(hid_t obj, bool is_attr) {
  Handle ftype(is_attr ? H5Aget_type(obj) : H5Dget_type(obj), H5Tclose, "get type");
  if (H5Tget_class(ftype) != H5T_STRING) throw Error("HDF5: not a string");
  Handle space(is_attr ? H5Aget_space(obj) : H5Dget_space(obj), H5Sclose, "get space");
  const auto n = static_cast<std::size_t>(std::max<hssize_t>(1, H5Sget_simple_extent_npoints(space)));
  std::vector<std::string> out;
  if (H5Tis_variable_str(ftype) > 0) {
    auto mtype = string_type();
    std::vector<char*> ptrs(n, nullptr);
    const herr_t rc = is_attr ? H5Aread(obj, mtype, ptrs.data()) : H5Dread(obj, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data());
    if (rc < 0) throw Error("HDF5: cannot read strings");
    for (auto* p : ptrs) out.emplace_back(p ? p : "");
    H5Dvlen_reclaim(mtype, space, H5P_DEFAULT, ptrs.data());
  } else {
    const std::size_t len = H5Tget_size(ftype);
    std::vector<char> buf(n * len + 1, '\0');
    const herr_t rc = is_attr ? H5Aread(obj, ftype, buf.data()) : H5Dread(obj, ftype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data());
    if (rc < 0) throw Error("HDF5: cannot read strings");
    for (std::size_t i = 0; i < n; ++i) {
      std::string s(buf.data() + i * len, len);
      out.push_back(s.substr(0, s.find('\0')));
    }
  }
  return out;
}
}  // namespace

std::string read_attr_string(hid_t obj, const std::string& name) {
  Handle a(H5Aopen(obj, name.c_str(), H5P_DEFAULT), H5Aclose, "open attribute '" + name + "'");
  return read_string_values(a, true).at(0);
}

std::vector<hsize_t> shape(hid_t loc, const std::string& name) {
  Handle ds(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), H5Dclose, "open dataset '" + name + "'");
  Handle space(H5Dget_space(ds), H5Sclose, "get space");
  const int rank = H5Sget_simple_extent_ndims(space);
  std::vector<hsize_t> dims(static_cast<std::size_t>(std::max(rank, 0)));
  H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  return dims;
}

template <class T>
std::vector<T> read(hid_t loc, const std::string& name, std::vector<hsize_t>* dims_out) {
  const auto dims = shape(loc, name);
  Handle ds(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), H5Dclose, "open dataset '" + name + "'");
  const std::size_t n = std::accumulate(dims.begin(), dims.end(), std::size_t{1}, std::multiplies<>());
  std::vector<T> v(n);
  if (n && H5Dread(ds, native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) < 0)
    throw Error("HDF5: cannot read dataset '" + name + "'");
  if (dims_out) *dims_out = dims;
  return v;
}

namespace {
// Selects rows [row_begin, row_begin + row_count) of planes [first, first + count) of a dataset's
// space: dims (planes?, rows, cols), or a volume (planes?, Z, Y, cols) whose rows are its slices'
// stacked (row r is row r % Y of slice r / Y). A volume's rows take one hyperslab per slice they
// cross; HDF5 transfers the union in the file's order (plane, slice, row, column): the
// flattened rows in order.
void select_rows(hid_t space, const std::vector<hsize_t>& dims, bool planes, hsize_t first, hsize_t count, hsize_t row_begin,
                 hsize_t row_count) {
  const std::size_t lead = planes ? 1 : 0;
  const bool volume = dims.size() == lead + 3;
  const hsize_t slice_rows = dims[lead + (volume ? 1 : 0)], cols = dims.back();
  H5Sselect_none(space);
  for (hsize_t r = row_begin; r < row_begin + row_count;) {
    const hsize_t y = r % slice_rows, n = std::min(slice_rows - y, row_begin + row_count - r);
    std::vector<hsize_t> start, cnt;
    if (planes) start.push_back(first), cnt.push_back(count);
    if (volume) start.push_back(r / slice_rows), cnt.push_back(1);
    start.insert(start.end(), {y, 0}), cnt.insert(cnt.end(), {n, cols});
    if (H5Sselect_hyperslab(space, H5S_SELECT_OR, start.data(), nullptr, cnt.data(), nullptr) < 0)
      throw Error("HDF5: cannot select rows");
    r += n;
  }
}
// The rows of a dataset of these dims (see select_rows).
hsize_t image_rows(const std::vector<hsize_t>& dims, bool planes) {
  hsize_t rows = 1;
  for (std::size_t a = planes ? 1 : 0; a + 1 < dims.size(); ++a) rows *= dims[a];
  return rows;
}
}  // namespace

template <class T>
void read_planes_into(hid_t loc, const std::string& name, hsize_t first, hsize_t count, std::span<T> out,
                      hsize_t row_begin, hsize_t row_count, hid_t transfer) {
  auto dims = shape(loc, name);
  if ((dims.size() != 3 && dims.size() != 4) || first + count > dims[0])
    throw Error("HDF5: bad plane range for '" + name + "'");
  const hsize_t rows = image_rows(dims, true), cols = dims.back();
  if (row_count == 0) row_begin = 0, row_count = rows;
  if (row_begin + row_count > rows) throw Error("HDF5: bad row range for '" + name + "'");
  if (out.size() != count * row_count * cols) throw Error("HDF5: buffer size does not match the planes of '" + name + "'");
  Handle ds(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), H5Dclose, "open dataset '" + name + "'");
  Handle fspace(H5Dget_space(ds), H5Sclose, "get space");
  select_rows(fspace, dims, true, first, count, row_begin, row_count);
  const hsize_t elements = count * row_count * cols;
  Handle mspace(H5Screate_simple(1, &elements, nullptr), H5Sclose, "create memory space");
  if (H5Dread(ds, native_type<T>(), mspace, fspace, transfer, out.data()) < 0)
    throw Error("HDF5: cannot read planes of '" + name + "'");
}

void create_allocated(hid_t loc, const std::string& path, hid_t type, const std::vector<hsize_t>& dims) {
  Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose, "create dataspace");
  Handle links(H5Pcreate(H5P_LINK_CREATE), H5Pclose, "create link properties");
  Handle layout(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, "create dataset properties");
  // Parallel HDF5 writes raw data collectively only into storage that exists: allocated here,
  // by the one process that creates the file, and not filled (every value is written after).
  if (H5Pset_create_intermediate_group(links, 1) < 0 || H5Pset_layout(layout, H5D_CONTIGUOUS) < 0 ||
      H5Pset_alloc_time(layout, H5D_ALLOC_TIME_EARLY) < 0 || H5Pset_fill_time(layout, H5D_FILL_TIME_NEVER) < 0)
    throw Error("HDF5: cannot set the properties of '" + path + "'");
  Handle ds(H5Dcreate2(loc, path.c_str(), type, space, links, layout, H5P_DEFAULT), H5Dclose, "create dataset '" + path + "'");
}

void write_rows(hid_t loc, const std::string& path, hid_t type, const void* data, bool planes, hsize_t row_begin,
                hsize_t row_count, std::size_t offset, std::size_t stride, hid_t transfer) {
  const auto dims = shape(loc, path);
  const hsize_t cols = dims.back(), nplanes = planes ? dims[0] : 1, values = row_count * cols;
  if (dims.size() < (planes ? 3u : 2u) || row_begin + row_count > image_rows(dims, planes) || offset + values > stride)
    throw Error("HDF5: rows out of range for '" + path + "'");
  Handle ds(H5Dopen2(loc, path.c_str(), H5P_DEFAULT), H5Dclose, "open dataset '" + path + "'");
  Handle fspace(H5Dget_space(ds), H5Sclose, "get space");
  select_rows(fspace, dims, planes, 0, nplanes, row_begin, row_count);
  // Memory: planes × stride values, of which [offset, offset + values) of each.
  const hsize_t mdims[2] = {nplanes, stride}, mstart[2] = {0, offset}, mcount[2] = {nplanes, values};
  Handle mspace(H5Screate_simple(2, mdims, nullptr), H5Sclose, "create memory space");
  if (H5Sselect_hyperslab(mspace, H5S_SELECT_SET, mstart, nullptr, mcount, nullptr) < 0) throw Error("HDF5: cannot select rows");
  if (H5Dwrite(ds, type, mspace, fspace, transfer, data) < 0) throw Error("HDF5: cannot write rows of '" + path + "'");
}

template <class T>
std::vector<T> read_planes(hid_t loc, const std::string& name, hsize_t first, hsize_t count) {
  auto dims = shape(loc, name);
  if ((dims.size() != 3 && dims.size() != 4) || first + count > dims[0])
    throw Error("HDF5: bad plane range for '" + name + "'");
  std::vector<T> v(count * std::accumulate(dims.begin() + 1, dims.end(), hsize_t{1}, std::multiplies<>()));
  read_planes_into<T>(loc, name, first, count, std::span<T>(v));
  return v;
}

std::vector<std::string> read_strings(hid_t loc, const std::string& name) {
  Handle ds(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), H5Dclose, "open dataset '" + name + "'");
  return read_string_values(ds, false);
}
std::string read_string(hid_t loc, const std::string& name) { return read_strings(loc, name).at(0); }

std::vector<std::string> list(hid_t group) {
  std::vector<std::string> names;
  H5Literate(group, H5_INDEX_NAME, H5_ITER_INC, nullptr,
             [](hid_t, const char* n, const H5L_info_t*, void* op) -> herr_t {
               static_cast<std::vector<std::string>*>(op)->emplace_back(n);
               return 0;
             },
             &names);
  return names;
}

#define XANESD_H5_INSTANTIATE(T)                                                                        \
  template void write<T>(hid_t, const std::string&, const T*, const std::vector<hsize_t>&);            \
  template std::vector<T> read<T>(hid_t, const std::string&, std::vector<hsize_t>*);                   \
  template std::vector<T> read_planes<T>(hid_t, const std::string&, hsize_t, hsize_t); \
  template void read_planes_into<T>(hid_t, const std::string&, hsize_t, hsize_t, std::span<T>, hsize_t, hsize_t, hid_t);
XANESD_H5_INSTANTIATE(float)
XANESD_H5_INSTANTIATE(double)
XANESD_H5_INSTANTIATE(std::int32_t)
XANESD_H5_INSTANTIATE(std::int64_t)
XANESD_H5_INSTANTIATE(std::uint8_t)
XANESD_H5_INSTANTIATE(std::uint16_t)
XANESD_H5_INSTANTIATE(std::uint32_t)

}  // namespace xanesd::h5
