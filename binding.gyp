{
  "targets": [
    {
      "target_name": "dmthin",
      "sources": [
        "native/addon.cc",
        "native/errors.cc",
        "native/crc32c.cc",
        "native/decimal_cells.cc",
        "native/details_columns.cc",
        "native/btree_walk.cc",
        "native/uring.cc",
        "native/rmap_lines.cc",
        "native/std_sort.cc",
        "native/file_io.cc",
        "native/block_reader.cc",
        "native/block_writer.cc",
        "native/dm_control.cc",
        "native/dm_poll.cc",
        "native/file_lock.cc",
        "native/file_map.cc",
        "native/file_put.cc",
        "native/digest_pipe.cc",
        "native/range_reader.cc",
        "native/range_ring.cc",
        "native/exit_guard.cc",
        "native/allocator.cc",
        "native/third_party/blake3/blake3.c",
        "native/third_party/blake3/blake3_dispatch.c",
        "native/third_party/blake3/blake3_portable.c"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED"
      ],
      "cflags!": [
        "-fno-exceptions"
      ],
      "cflags_cc!": [
        "-fno-exceptions"
      ],
      "cflags_cc": [
        "-std=c++17",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Wno-unused-parameter",
        "-fvisibility=hidden"
      ],
      "ldflags": [
        "-Wl,--version-script=<(module_root_dir)/native/exports.ver"
      ],
      "conditions": [
        [
          "OS!='linux'",
          {
            "type": "none"
          }
        ],
        [
          "target_arch=='x64'",
          {
            "sources": [
              "native/third_party/blake3/blake3_sse2_x86-64_unix.S",
              "native/third_party/blake3/blake3_sse41_x86-64_unix.S",
              "native/third_party/blake3/blake3_avx2_x86-64_unix.S",
              "native/third_party/blake3/blake3_avx512_x86-64_unix.S"
            ]
          },
          {
            "defines": [
              "BLAKE3_NO_SSE2",
              "BLAKE3_NO_SSE41",
              "BLAKE3_NO_AVX2",
              "BLAKE3_NO_AVX512",
              "BLAKE3_USE_NEON=0"
            ]
          }
        ]
      ],
      "cflags_c": [
        "-O2",
        "-fvisibility=hidden"
      ]
    }
  ]
}
