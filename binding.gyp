{
  "targets": [
    {
      "target_name": "dmthin",
      "sources": [
        "native/addon.cc",
        "native/errors.cc",
        "native/crc32c.cc",
        "native/file_io.cc",
        "native/block_reader.cc",
        "native/block_writer.cc",
        "native/dm_control.cc",
        "native/dm_poll.cc",
        "native/file_lock.cc",
        "native/file_put.cc",
        "native/sha256_pipe.cc",
        "native/range_reader.cc",
        "native/exit_guard.cc",
        "native/allocator.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"],
      "conditions": [
        ["OS!='linux'", { "type": "none" }]
      ]
    }
  ]
}
