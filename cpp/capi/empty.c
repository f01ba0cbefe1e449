/* The C ABI lives in the core archive; this file gives the shared library a source. */
typedef int moe_ep_empty_translation_unit;
