
isa-1school-bkind:social_care"*education.*2summary2/education_attendance_concern.attendance_percent8