// kvmkit's POV-Ray scene for `kvmkit bench --guest linux` (no include files needed):
// nine reflective spheres over a checkered plane, two lights.
global_settings { max_trace_level 8 }
camera { location <0, 2.5, -7> look_at <0, 0.8, 0> }
light_source { <-6, 10, -6> color rgb <1, 1, 1> }
light_source { <6, 8, -2> color rgb <0.5, 0.5, 0.6> }
plane {
  y, 0
  pigment { checker color rgb <0.9, 0.9, 0.9> color rgb <0.1, 0.1, 0.3> }
  finish { reflection 0.2 }
}
#declare I = 0;
#while (I < 9)
  sphere {
    <-3 + mod(I, 3) * 3, 0.9 + div(I, 3) * 0.4, div(I, 3) * 2.5>, 0.8
    pigment { color rgb <0.3 + 0.07 * I, 0.8 - 0.08 * I, 0.5> }
    finish { reflection 0.4 specular 0.6 phong 0.5 }
  }
  #declare I = I + 1;
#end
