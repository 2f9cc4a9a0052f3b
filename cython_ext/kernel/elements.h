// Chemical element symbols and atomic numbers.
#pragma once

#include <string>

namespace pyfragnn {

/// Atomic number of a symbol ("H" -> 1), 0 if unknown.
int atomic_number(const std::string& symbol);
/// Symbol of an atomic number, "" if out of range.
std::string element_symbol(int z);

}  // namespace pyfragnn
