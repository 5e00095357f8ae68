// Thin RAII over the HDF5 C API: just what xanesd's files need. One owner thread per file.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <span>
#include <string>
#include <vector>

namespace xanesd::h5 {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Owns one hid_t and closes it with the right H5*close.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer close, const std::string& what);
  Handle(Handle&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = H5I_INVALID_HID; }
  Handle& operator=(Handle&& o) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle();
  hid_t id() const { return id_; }
  operator hid_t() const { return id_; }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer close_ = nullptr;
};

Handle create_file(const std::filesystem::path& path);  // truncates
// Read-only; `access`: a file access property list (an MPI-IO one from service/parallel).
Handle open_file(const std::filesystem::path& path, hid_t access = H5P_DEFAULT);
// Read-write, e.g. by every rank of an MPI job with an MPI-IO `access` (collective).
Handle open_file_for_writing(const std::filesystem::path& path, hid_t access = H5P_DEFAULT);
Handle create_group(hid_t loc, const std::string& name, const std::string& nx_class = "");
Handle open_group(hid_t loc, const std::string& name);
// The group `name`, created if missing; `nx_class` set if it has none yet.
Handle require_group(hid_t loc, const std::string& name, const std::string& nx_class = "");
bool exists(hid_t loc, const std::string& path);

template <class T> hid_t native_type();

// Writes a dataset of shape `dims` (C order); gzip-free, so any HDF5 reader opens it.
template <class T>
void write(hid_t loc, const std::string& name, const T* data, const std::vector<hsize_t>& dims);
template <class T>
void write(hid_t loc, const std::string& name, const std::vector<T>& v, std::vector<hsize_t> dims = {}) {
  if (dims.empty()) dims = {v.size()};
  write(loc, name, v.data(), dims);
}
// An empty dataset at `path` (relative to loc; missing groups on the way are created) whose
// storage is allocated now, contiguous and never filled: write_rows then writes into it, from
// every rank of an MPI job at once if the file is reopened with MPI-IO.
void create_allocated(hid_t loc, const std::string& path, hid_t type, const std::vector<hsize_t>& dims);
// Writes rows [row_begin, row_begin + row_count) of every plane of the dataset at `path`: its
// dims are (planes?, rows, cols) or, a volume, (planes?, Z, Y, cols) with rows = Z·Y (`planes`
// says whether the leading axis is there). `data` holds each plane's rows in turn, `stride`
// values apart, the first at `offset`. `transfer`: collective under MPI.
void write_rows(hid_t loc, const std::string& path, hid_t type, const void* data, bool planes, hsize_t row_begin,
                hsize_t row_count, std::size_t offset, std::size_t stride, hid_t transfer = H5P_DEFAULT);
// A virtual dataset `name` of shape source_dims[1:]: plane `plane` of the dataset at
// `source_path` (absolute, in this file) of shape source_dims and type `type`. Readers see a
// plain dataset; the file holds the values once.
void write_plane_view(hid_t loc, const std::string& name, const std::string& source_path,
                      const std::vector<hsize_t>& source_dims, hsize_t plane, hid_t type);
void write_string(hid_t loc, const std::string& name, const std::string& value);
void write_strings(hid_t loc, const std::string& name, const std::vector<std::string>& values);
void attr_string(hid_t obj, const std::string& name, const std::string& value);
void attr_strings(hid_t obj, const std::string& name, const std::vector<std::string>& values);
std::string read_attr_string(hid_t obj, const std::string& name);
bool has_attr(hid_t obj, const std::string& name);

// Reads a whole dataset converted to T; `dims` receives its shape.
template <class T>
std::vector<T> read(hid_t loc, const std::string& name, std::vector<hsize_t>* dims = nullptr);
std::vector<hsize_t> shape(hid_t loc, const std::string& name);
std::vector<std::string> read_strings(hid_t loc, const std::string& name);
std::string read_string(hid_t loc, const std::string& name);
std::vector<std::string> list(hid_t group);

// Reads planes [first, first+count) along axis 0 of a 3-D dataset (for streaming large scans),
// or of a 4-D one (a volume: planes × Z × Y × X) as planes of Z·Y rows.
template <class T>
std::vector<T> read_planes(hid_t loc, const std::string& name, hsize_t first, hsize_t count);
// The same into `out` (count × plane size elements): a buffer reused across reads. Only rows
// [row_begin, row_begin + row_count) of each plane when row_count > 0 (an MPI rank's block),
// read with the transfer property list `transfer` (collective under MPI).
template <class T>
void read_planes_into(hid_t loc, const std::string& name, hsize_t first, hsize_t count, std::span<T> out,
                      hsize_t row_begin = 0, hsize_t row_count = 0, hid_t transfer = H5P_DEFAULT);

}  // namespace xanesd::h5
