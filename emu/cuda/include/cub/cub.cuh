#pragma once
#include "device/device_scan.cuh"
